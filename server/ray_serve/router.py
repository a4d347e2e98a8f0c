"""Ray Serve request router: a conversation's requests go to the replica that holds its prefix cache, unless that
replica is much busier than the least-loaded one.

The preferred replica comes from rendezvous hashing of the conversation key over the live replicas, so adding or
losing a replica moves only the conversations that hashed to it. The other replicas follow, least loaded first:
Ray sends the request to the first replica of the ranking that accepts it.
"""

import hashlib

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

AFFINITY_KWARG = "affinity_key"


def rendezvous_order(key: str, replica_ids: list[str]) -> list[str]:
    """Replica ids from most to least preferred for `key`: the same key always ranks the same replicas the same
    way."""

    def weight(replica_id: str) -> bytes:
        return hashlib.blake2b(f"{key}/{replica_id}".encode(), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)


class ConversationAffinityRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, imbalance: int = 8, **kwargs: object) -> None:
        """`imbalance`: how many more queued requests than the least-loaded replica the preferred one may have
        before a conversation is sent elsewhere (its prefix is then prefilled again there)."""
        self._imbalance = imbalance

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        def load(replica: RunningReplica) -> int:
            return self.replica_queue_len_cache.get(replica.replica_id) or 0

        by_load = sorted(candidate_replicas, key=load)
        key = pending_request.kwargs.get(AFFINITY_KWARG) if pending_request is not None else None
        if not key or not by_load:
            return [by_load]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        preferred = by_id[rendezvous_order(key, list(by_id))[0]]
        if load(preferred) - load(by_load[0]) > self._imbalance:
            return [by_load]
        return [[preferred], [replica for replica in by_load if replica is not preferred]]
