"""The merchant's side of secure aggregation: Flower's SecAgg+ around the train handler.

With ``secure-aggregation = true`` the server drives Flower's SecAgg+ workflow
(``server.secagg``), whose train messages carry a ``secaggplus_configs`` record and
the legacy FitIns layout. ``secure_aggregation_mod`` hands exactly those messages to
Flower's ``secaggplus_mod`` and, around the merchant's ordinary train handler,
translates the legacy layout to the one the handler reads (θ by name, the round's
config) and the handler's reply (the clipped delta and its metrics) back to a legacy
FitRes. The mod then quantises, masks and sends the delta; the server never sees it
alone. Every other message goes straight to the handler, so one ClientApp serves both
paths.
"""

from __future__ import annotations

import logging

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import (
    fitres_to_recorddict,
    recorddict_to_fitins,
)

logger = logging.getLogger(__name__)

# Set by the server's SecAgg+ path (server.secagg): θ's array names, in the order of
# the legacy parameter list, and the cap on a merchant's aggregation weight.
NAMES_KEY = "parameter-names"
MAX_WEIGHT_KEY = "secagg-max-weight"


def secure_aggregation_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """SecAgg+ for the server's secure rounds; the plain handler for anything else."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or RECORD_KEY_CONFIGS not in msg.content.config_records
    ):
        return call_next(msg, context)
    return secaggplus_mod(msg, context, _legacy_train(call_next))


def _legacy_train(call_next: ClientAppCallable) -> ClientAppCallable:
    """The train handler, reading a legacy FitIns and answering with a legacy FitRes."""

    def handle(msg: Message, context: Context) -> Message:
        fitins = recorddict_to_fitins(msg.content, keep_input=True)
        names = str(fitins.config[NAMES_KEY]).split(",")
        arrays = parameters_to_ndarrays(fitins.parameters)
        if len(names) != len(arrays):
            raise ValueError(
                f"secagg: {len(arrays)} arrays but {len(names)} names in {NAMES_KEY}"
            )
        config = {
            key: value
            for key, value in fitins.config.items()
            if key not in (NAMES_KEY, MAX_WEIGHT_KEY)
        }
        config["codec"] = "float32"  # the protocol quantises the raw values itself
        msg.content = RecordDict(
            {
                "theta": ArrayRecord(
                    {n: Array(a) for n, a in zip(names, arrays, strict=True)}
                ),
                "config": ConfigRecord(config),  # type: ignore[arg-type]
            }
        )
        reply = call_next(msg, context)
        if reply.has_error():
            return reply

        # The delta in θ's order, weighted by examples up to the cap (1 = uniform).
        delta = reply.content.array_records["delta"]
        metrics = reply.content.metric_records["metrics"]
        merchant = reply.content.config_records["merchant"]
        max_weight = float(fitins.config.get(MAX_WEIGHT_KEY, 1.0))
        examples = int(metrics["num-examples"])  # type: ignore[arg-type]
        weight = 1 if max_weight <= 1 else min(examples, int(max_weight))
        fitres = FitRes(
            status=Status(Code.OK, ""),
            parameters=ndarrays_to_parameters([delta[n].numpy() for n in names]),
            num_examples=weight,
            metrics={
                "merchant-id": str(merchant["merchant-id"]),
                "num-examples": examples,
                "loss-before": float(metrics["loss-before"]),  # type: ignore[arg-type]
                "loss-after": float(metrics["loss-after"]),  # type: ignore[arg-type]
            },
        )
        return Message(fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    return handle
