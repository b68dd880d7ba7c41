"""Flower messages as they travel: serialised with Flower's own code, and measured.

Flower 1.42 moves a message as a tree of content-addressed objects (the message, its
RecordDict, each record, each Array and its chunks), each deflated to bytes by the
object's own ``deflate()``; a SuperNode pushes those bytes to the SuperLink and the
other side inflates them. The size of a reply on the wire is therefore the sum of its
objects' deflated bytes: the arrays' ``.npy`` payloads plus names, dtypes, shapes,
metrics and the message's metadata.

The helpers here let the scale benchmark and the round profile build, ship and
measure messages outside a running federation, with the same serialisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity


def serialise(message: Message) -> dict[str, bytes]:
    """The message's objects as Flower deflates them, keyed by object id.

    Identical objects (the same θ sent to many merchants, two all-zero chunks) are
    stored once, as Flower's object store does.
    """
    return {
        object_id: obj.deflate()
        for object_id, obj in get_all_nested_objects(message).items()
    }


def wire_bytes(message: Message) -> int:
    """Bytes of the serialised message: what its sender pushes."""
    return sum(len(content) for content in serialise(message).values())


def transmit(message: Message) -> Message:
    """The message as the receiver inflates it from its serialised objects."""
    contents = serialise(message)
    inflated = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(inflated, Message)
    return inflated


@contextlib.contextmanager
def server_identity(run_id: int = 1) -> Iterator[None]:
    """Act as a running ServerApp, so that messages can be built outside Flower.

    Flower stamps a new message with the identity of the task that runs it; the
    ServerApp runtime sets that identity, and this sets the same for a harness.
    """
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous
