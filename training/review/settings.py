"""``MaskStore.settings``: the store's settings (threshold, min area, ...) as a dict persisted in
its attributes."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.review.store import MaskStore


class StoreSettings(MutableMapping):
    """``store.settings``: a dict persisted in the store's attributes on every change."""

    def __init__(self, store: MaskStore) -> None:
        self._store = store

    def _values(self) -> dict[str, Any]:
        return dict(self._store._attrs.get("settings", {}))

    def __getitem__(self, key: str) -> Any:
        return self._values()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store._update_attrs(settings={**self._values(), key: value})

    def __delitem__(self, key: str) -> None:
        values = self._values()
        del values[key]
        self._store._update_attrs(settings=values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return repr(self._values())
