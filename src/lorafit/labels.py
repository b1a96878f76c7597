"""Label spaces: names in id order, and the mapping from raw values (strings or integers) to ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lorafit.errors import LorafitError


@dataclass
class LabelSpace:
    """Label names in id order; ``raw_to_id`` maps the values found in the data to those ids."""

    names: list[str]
    raw_to_id: dict[Any, int] = field(default_factory=dict)
    scheme: str | None = None  # NER tag scheme (IO, BIO, BIOES); None for classification

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def infer(cls, values: Iterable[Any], names: Sequence[str] | None = None) -> LabelSpace:
        """Build the label space from the training values.

        Integers map through their sorted unique values to 0..K-1 (AG News files use 1-4, the Hub's 0-3), and
        their names are the original values unless ``names`` gives them. Strings keep their names, in
        ``names`` order when given, else sorted.
        """
        uniq = sorted({_norm(v) for v in values}, key=lambda v: (isinstance(v, str), v))
        if not uniq:
            raise LorafitError("E104", path="training data")
        if all(isinstance(v, int) for v in uniq):
            if names is not None:
                if len(names) == len(uniq):
                    return cls(list(names), {v: i for i, v in enumerate(uniq)})
                if all(0 <= v < len(names) for v in uniq):  # ids into the given names
                    return cls(list(names), {i: i for i in range(len(names))} | {n: i for i, n in enumerate(names)})
                raise LorafitError("E109", value=uniq[-1], where="training data", row="?", labels=list(names))
            return cls([str(v) for v in uniq], {v: i for i, v in enumerate(uniq)})
        strs = [str(v) for v in uniq]
        if names is not None:
            unknown = [s for s in strs if s not in names]
            if unknown:
                raise LorafitError("E109", value=unknown[0], where="training data", row="?", labels=list(names))
            return cls(list(names), {n: i for i, n in enumerate(names)})
        strs = sorted(strs)
        return cls(strs, {n: i for i, n in enumerate(strs)})

    def encode(self, value: Any, where: str, row: int) -> int:
        key = _norm(value)
        if key in self.raw_to_id:
            return self.raw_to_id[key]
        if isinstance(key, str) and key in self.label2id:
            return self.label2id[key]
        raise LorafitError("E109", value=value, where=where, row=row, labels=self.names)


def _norm(value: Any) -> Any:
    """Integers stay integers (also when a CSV reader made them floats or strings of digits)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if hasattr(value, "item"):  # numpy scalars
        return _norm(value.item())
    if isinstance(value, str):
        s = value.strip()
        if s.lstrip("-").isdigit():
            return int(s)
        return s
    return value
