"""Which client each generating sample belongs to, for KoboldCpp's `/api/extra/abort`, which names no request:
it ends the generations of the client that calls it (only the one it names by `genkey`, when it names one)."""


class ClientGenerations:
    def __init__(self) -> None:
        self._owners: dict[str, tuple[str, str | None]] = {}  # sample id -> (client host, genkey)

    def add(self, sample_ids: list[str], client: str, genkey: str | None) -> None:
        for sample_id in sample_ids:
            self._owners[sample_id] = (client, genkey)

    def discard(self, sample_ids: list[str]) -> None:
        for sample_id in sample_ids:
            self._owners.pop(sample_id, None)

    def of(self, client: str, genkey: str | None) -> list[str]:
        """The samples of `client`, only those named `genkey` when it is given."""
        return [
            sample_id
            for sample_id, (owner, key) in self._owners.items()
            if owner == client and (genkey is None or key == genkey)
        ]
