"""A Flower Grid that runs a ClientApp in this process, one node after another.

For tests and debugging of apps that use fedpress: no Ray, no SuperLink, results
that do not depend on scheduling. Every message crosses a protobuf round trip, as
over gRPC, so what arrives is what Flower would carry (custom ``stype`` Arrays
included). Each node keeps its own :class:`flwr.app.Context` across rounds, as a
SuperNode does. ``tamper`` lets a test corrupt a node's replies.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 101  # node ids: FIRST_NODE_ID + partition id


def _over_the_wire(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


class InlineGrid(Grid):
    """``nodes`` SuperNodes running ``app``; node ``i`` (0-based; id
    ``FIRST_NODE_ID + i``) gets the node config ``{"partition-id": i,
    "num-partitions": nodes}``. Makes this process the server of run 1 (Flower's
    messages take their sender from the process's task identity).

    Parameters
    ----------
    app : flwr.clientapp.ClientApp
        The client app every node runs.
    nodes : int
        How many nodes.
    run_config : dict, optional
        The run config every node sees.
    tamper : callable, optional
        ``tamper(node_id, reply) -> reply or None``, applied to each reply before
        the server gets it (a test's faulty client or network; None: the reply is
        lost).
    """

    def __init__(self, app: ClientApp, nodes: int, run_config: dict | None = None,
                 tamper: Callable[[int, Message], Message] | None = None) -> None:
        self.app, self.tamper = app, tamper
        TaskIdentity.run_id, TaskIdentity.node_id = 1, SUPERLINK_NODE_ID
        TaskIdentity.task_id = 0
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id=1, node_id=FIRST_NODE_ID + i,
                           node_config={"partition-id": i, "num-partitions": nodes},
                           state=RecordDict(), run_config=dict(run_config or {}))
            for i in range(nodes)}
        self._ids = itertools.count(1)
        self._run = None
        self.bytes_sent: list[int] = []  # serialized content sizes, server to nodes
        self.bytes_received: list[int] = []  # and back

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._run = run

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InlineGrid runs send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InlineGrid runs send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Deliver each message to its node's app, in order; the replies."""
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            proto = recorddict_to_proto(m.content)
            self.bytes_sent.append(proto.ByteSize())
            metadata = copy.copy(m.metadata)
            metadata.__dict__["_message_id"] = f"m{next(self._ids)}"  # the SuperLink's job
            received = Message(metadata=metadata, content=recorddict_from_proto(proto))
            try:
                reply = self.app(received, self.contexts[node])
            except Exception as exc:  # what a SuperNode sends back when the app raises
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=received)
            if reply.has_content():
                proto = recorddict_to_proto(reply.content)
                self.bytes_received.append(proto.ByteSize())
                reply = Message(content=recorddict_from_proto(proto), reply_to=received)
            if self.tamper is not None:
                reply = self.tamper(node, reply)
            if reply is not None:
                replies.append(reply)
        return replies
