"""The scale benchmark: bytes measured on Flower's serialised messages, memory of a
process tree, the overhead ratios, and a complete ``--quick`` run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from simulations import scale
from simulations.wire import server_identity, transmit, wire_bytes


def _message(values: np.ndarray) -> Message:
    with server_identity():
        return Message(
            content=RecordDict(
                {
                    "delta": ArrayRecord(array_dict={"w": Array(values)}),
                    "config": ConfigRecord({"codec": "float32"}),
                }
            ),
            dst_node_id=7,
            message_type="train",
        )


# ---------------------------------------------------------------------------
# Bytes on the wire
# ---------------------------------------------------------------------------


def test_wire_bytes_grow_by_exactly_the_bytes_added_to_an_array() -> None:
    # Prepare: 1000 and 1256 float32 values; the .npy header and the shape's text
    # have the same length for both, so the difference is 256 · 4 = 1024 bytes.
    small = _message(np.ones(1000, np.float32))
    large = _message(np.ones(1256, np.float32))

    # Execute
    difference = wire_bytes(large) - wire_bytes(small)

    # Assert
    assert difference == 1024
    assert wire_bytes(small) > 4000  # the values themselves are counted


def test_a_transmitted_message_arrives_with_the_same_arrays_and_config() -> None:
    # Prepare
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    message = _message(values)

    # Execute
    received = transmit(message)

    # Assert
    np.testing.assert_array_equal(
        received.content.array_records["delta"]["w"].numpy(), values
    )
    assert received.content.config_records["config"]["codec"] == "float32"
    assert received.metadata.dst_node_id == 7


def test_codec_bytes_measure_the_real_clientapp_replies() -> None:
    # Execute: two merchants reply through the ClientApp under every codec.
    rows = {row["codec"]: row for row in scale.codec_bytes(merchants=2)}

    # Assert: float32 carries θ's 267,296 values (4 bytes each) plus framing;
    # float16 halves and int8 quarters the values, each adding a little framing;
    # row-sparse sends a small share of the item tables' rows.
    values = 4096 * 32 * 2 + 4096 + 32 * 32 + 32
    assert values * 4 < rows["float32"]["bytes-per-update"] < values * 4 + 8_000
    assert rows["float32"]["ratio-vs-float32"] == 1.0
    assert 1.98 < rows["float16"]["ratio-vs-float32"] <= 2.0
    assert 3.9 < rows["int8"]["ratio-vs-float32"] <= 4.0
    assert rows["row-sparse"]["ratio-vs-float32"] > 5.0
    assert rows["row-sparse-int8"]["ratio-vs-float32"] > 20.0
    assert all(row["theta-bytes"] > values * 4 for row in rows.values())


# ---------------------------------------------------------------------------
# Memory of a process tree, and the ratios
# ---------------------------------------------------------------------------


def test_tree_memory_counts_a_child_process() -> None:
    # Prepare: a child that holds 200 MB of touched memory for two seconds.
    child = subprocess.Popen(
        [sys.executable, "-c", "x = b'1' * 200_000_000; import time; time.sleep(2)"]
    )

    # Execute
    with scale.TreeMemory(lambda: [child.pid], every=0.1, pss_every=1) as memory:
        child.wait(timeout=30)
    figures = memory.figures()

    # Assert: the sampled peak holds the child's 200 MB (plus Python itself).
    assert figures["peak-rss-mb"] >= 200
    assert figures["peak-pss-mb"] >= 190
    assert figures["peak-processes"] >= 1


def test_cpu_between_interpolates_a_series_made_non_decreasing() -> None:
    # Prepare: CPU totals 0, 2, 1 (a process left the tree), 5 at t = 0, 1, 2, 3;
    # made non-decreasing: 0, 2, 2, 5.
    tree = scale.TreeMemory(lambda: [])
    tree.cpu_series = [(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (3.0, 5.0)]

    # Execute / Assert: from t = 0.5 (1.0) to t = 2.5 (3.5).
    assert tree.cpu_between(0.5, 2.5) == pytest.approx(2.5)
    assert tree.cpu_between(1.0, 2.0) == pytest.approx(0.0)


def test_cpu_by_process_splits_the_time_by_kind_of_process() -> None:
    # Prepare: at t = 0, 1, 2 a SuperLink at 1, 3, 3 CPU s, a Ray worker at 0, 4, 10,
    # and the tree's total at 1, 7, 15: 2 s more by t = 2 came from a process too
    # short-lived to be sampled (reaped by a parent in the tree).
    tree = scale.TreeMemory(lambda: [])
    tree.process_series = {
        11: [(0.0, 1.0), (1.0, 3.0), (2.0, 3.0)],
        12: [(0.0, 0.0), (1.0, 4.0), (2.0, 10.0)],
    }
    tree.labels = {11: "flower-superlink", 12: "ray::ClientAppActor"}
    tree.cpu_series = [(0.0, 1.0), (1.0, 7.0), (2.0, 15.0)]

    # Execute: from t = 0.5 (2, 2 and 4) to t = 2 (3, 10 and 15).
    used = tree.cpu_by_process_between(0.5, 2.0)

    # Assert: 1 and 8 s; of the total 11 s, 2 s were nobody sampled. Largest first.
    assert list(used) == [
        "ray::ClientAppActor",
        "other (short-lived processes)",
        "flower-superlink",
    ]
    assert used["ray::ClientAppActor"] == pytest.approx(8.0)
    assert used["flower-superlink"] == pytest.approx(1.0)
    assert used["other (short-lived processes)"] == pytest.approx(2.0)


def test_a_process_is_labelled_by_the_module_python_runs() -> None:
    # Prepare: a child running a module for a few seconds.
    child = subprocess.Popen(
        [sys.executable, "-m", "timeit", "-n", "1", "import time; time.sleep(5)"]
    )
    try:
        # Execute: until the child has replaced itself with Python (exec).
        label = "unknown"
        for _ in range(100):
            label = scale._label(child.pid)
            if label != "unknown":
                break
            time.sleep(0.02)

        # Assert
        assert label == "timeit"
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.parametrize(
    ("words", "label"),
    [
        (
            ["/v/bin/python3.11", "/v/bin/flower-superlink", "--insecure"],
            "flower-superlink",
        ),
        (["ray::ClientAppActor.run"], "ray::ClientAppActor"),
        (["ray::IDLE"], "ray::IDLE"),
        (["/v/lib/ray/core/src/ray/raylet/raylet", "--port=1"], "raylet"),
        (["python", "-m", "simulations.scale", "--quick"], "simulations.scale"),
        (
            ["python", "-B", "-s", "-c", "from multiprocessing.spawn import x; x()"],
            "multiprocessing.spawn",
        ),
        (["python", "-c", "print(1)"], "python -c"),
        ([], "unknown"),
    ],
)
def test_command_lines_are_labelled_by_what_they_run(
    words: list[str], label: str
) -> None:
    assert scale.label_of(words) == label


def test_tree_cpu_counts_a_busy_child() -> None:
    # Prepare: a child that spins for about a CPU second.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 1.0\n"
            "while time.process_time() < end: pass\ntime.sleep(0.5)",
        ]
    )

    # Execute
    with scale.TreeMemory(lambda: [child.pid], every=0.1) as tree:
        child.wait(timeout=60)
    start, end = tree.cpu_series[0][0], tree.cpu_series[-2][0]

    # Assert: at least the second it spun (plus Python's start-up).
    assert tree.cpu_between(start, end) >= 0.95


def test_overhead_ratios_divide_framework_time_by_plain_time() -> None:
    # Prepare: rounds 10 s, then 4 s and 6 s (mean later 5 s, mean all 20/3 s);
    # the plain loop 4 s, then 2 s and 2 s (later 2 s, all 8/3 s).
    # CPU: 9 s then 6 s and 8 s (later 7 s) against 3 s then 3.5 s and 3.5 s.
    framework = scale.EngineRun(
        "flower", 10, 2, [10.0, 4.0, 6.0], 40.0, {}, [9.0, 6.0, 8.0]
    )
    plain = scale.EngineRun("plain", 10, 2, [4.0, 2.0, 2.0], 10.0, {}, [3.0, 3.5, 3.5])

    # Execute
    ratios = scale.overhead_ratios(framework, plain)

    # Assert
    assert ratios["overhead-ratio"] == pytest.approx(2.5)
    assert ratios["overhead-ratio-all-rounds"] == pytest.approx(2.5)
    assert ratios["overhead-ratio-whole-run"] == pytest.approx(4.0)
    assert ratios["overhead-ratio-cpu"] == pytest.approx(2.0)
    assert framework.summary()["steady-updates-per-second"] == pytest.approx(0.4)
    assert framework.summary()["updates-per-second"] == pytest.approx(0.3)


def test_per_round_sampling_is_pinned_by_the_minimum() -> None:
    # 29 of 100: int(100 · 0.29) is 28 in floating point; the minimum makes it 29.
    keys = scale.sampling(100, 29)
    assert keys == {"fraction_train": 0.29, "min_train_merchants": 29}
    with pytest.raises(ValueError, match="per-round must be in"):
        scale.sampling(10, 11)


# ---------------------------------------------------------------------------
# The whole benchmark, small (starts Flower: about a minute on an idle machine)
# ---------------------------------------------------------------------------


@pytest.mark.integration
def test_the_quick_run_completes_and_writes_every_figure(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "scale.json"

    # Execute
    code = scale.main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())

    # Assert: the figures the issue names, from every part.
    assert code == 0
    assert (report["merchants"], report["per-round"]) == (20, 4)
    for key in ("seconds-per-round", "updates-per-second", "overhead-ratio"):
        assert report[key] > 0
    assert report["peak-rss-mb"] > 100  # at least Ray and one ClientApp worker
    assert len(report["simulation"]["round-seconds"]) == 2
    assert len(report["plain-loop"]["round-seconds"]) == 2
    codecs = {row["codec"]: row for row in report["codecs"]}
    assert set(codecs) == set(scale.CODECS)
    assert codecs["float32"]["ratio-vs-float32"] == 1.0
    assert all(row["bytes-per-update"] > 0 for row in codecs.values())
    assert {row["codec"] for row in report["codec-quality"]} == set(scale.CODECS)
    assert report["adaptation"]["support-interactions"] == 2000
    assert report["adaptation"]["adapt-seconds-median"] > 0
