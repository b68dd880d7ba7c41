"""The ClientApp each merchant runs: adapt θ on private data, reply with the delta.

Only the delta arrays (named and shaped like θ) and a few scalars leave the merchant:
the number of support interactions (the aggregation weight) and the support loss
before and after adaptation. User ids, item ids and interactions never do.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client.data import load_merchant
from client.secagg import secure_aggregation_mod
from common import codecs
from common.adapt import adapt, round_seed
from common.algorithms import merchant_delta
from common.config import from_run_config
from common.evaluation import Budget, score_merchant
from common.reptile import global_norm
from common.robust import clip_by_norm

logger = logging.getLogger("client")

# Two simulated merchants share two cores: one thread each keeps them from contending,
# and keeps results identical whichever engine runs them.
torch.set_num_threads(1)

# Secure-aggregation rounds go through SecAgg+ around the same train handler.
app = ClientApp(mods=[secure_aggregation_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Adapt the received θ on this merchant's support data; reply with Δ."""
    config = from_run_config(context.run_config)
    merchant = load_merchant(context, config)
    sent = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(sent.get("server-round", 0))  # type: ignore[arg-type]
    codec = str(sent.get("codec", "float32"))
    theta = {k: v.numpy() for k, v in msg.content.array_records["theta"].items()}

    delta, result = merchant_delta(
        config.meta.algorithm,
        theta,
        merchant.data,
        config.model,
        config.adapt,
        seed=round_seed(config.seed, server_round, merchant.merchant_id),
    )
    # Bound the update before it leaves (the server enforces the same bound).
    delta = clip_by_norm(delta, config.defence.clip_norm).delta
    logger.info(
        "train: merchant %s round %d, %d examples, loss %.4f -> %.4f",
        merchant.merchant_id,
        server_round,
        result.num_examples,
        result.loss_before,
        result.loss_after,
    )
    content = RecordDict(
        {
            "delta": ArrayRecord(
                array_dict={k: Array(v) for k, v in codecs.encode(delta, codec).items()}
            ),
            "metrics": MetricRecord(
                {
                    "num-examples": result.num_examples,
                    "loss-before": result.loss_before,
                    "loss-after": result.loss_after,
                    "delta-norm": global_norm(delta),
                }
            ),
            "merchant": ConfigRecord({"merchant-id": merchant.merchant_id}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Adapt θ on support data with the new-merchant budget, score the test items."""
    config = from_run_config(context.run_config)
    merchant = load_merchant(context, config)
    theta = {k: v.numpy() for k, v in msg.content.array_records["theta"].items()}
    evaluation = config.evaluation
    budget = Budget(
        evaluation.adapt_steps, evaluation.adapt_lr, config.adapt.batch_size
    )
    seed = round_seed(config.seed, -1, merchant.merchant_id)
    parameters = adapt(
        theta, merchant.data, config.model, budget.as_adapt_config(), seed
    ).parameters
    scores = score_merchant(parameters, merchant.data, merchant.split, config.model)
    metrics = MetricRecord(
        {
            "num-examples": int(scores.ndcg.shape[0]),
            "ndcg@10": float(scores.ndcg.mean()),
            "hr@10": float(scores.hit_rate.mean()),
        }
    )
    return Message(
        content=RecordDict(
            {
                "metrics": metrics,
                "merchant": ConfigRecord({"merchant-id": merchant.merchant_id}),
            }
        ),
        reply_to=msg,
    )
