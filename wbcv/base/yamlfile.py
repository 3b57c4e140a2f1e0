"""The one YAML reader of wbcv: every YAML input of the product (batch manifest, validation
protocol, study configuration) is read here, and nothing else calls PyYAML.

What it guarantees, beyond PyYAML's ``safe_load`` (which builds only plain data):

* **Bounded size and work.** A file above :data:`MAX_YAML_BYTES` is refused before it is parsed.
  Anchors and aliases (``&a`` / ``*a``) are allowed, but the document may hold at most
  :data:`MAX_YAML_NODES` nodes *after* alias expansion and nest at most :data:`MAX_YAML_DEPTH`
  levels deep, so an alias chain ("billion laughs": ten aliases of ten aliases of ...) is refused
  in milliseconds instead of expanding to gigabytes downstream. An alias that contains itself is
  refused. The checks run on the parsed node graph (aliases are shared nodes there), before any
  Python object is built.
* **No silent overriding.** A key written twice in one mapping is an error naming the key and
  both line numbers (PyYAML keeps the second silently). Merge keys (``<<: *base``) are refused:
  their rule that a written key beats a merged one is an override nobody sees.
* **No silent change of meaning.** Plain scalars follow the YAML 1.2 core schema, not YAML 1.1:
  ``true``/``false`` are booleans but ``yes``, ``no``, ``on``, ``off`` stay text; integers are
  plain decimal without leading zeros (``010`` is neither octal 8 nor 10: it stays the text
  ``'010'``, which a number field then refuses with a message); ``0x1F``, ``0o17``, ``1_000`` and
  ``1:30`` (sexagesimal) stay text; ``1e3`` and ``2.5`` are floats; dates and times stay text (the
  reader of each field parses them). Explicit tags other than ``!!str`` (``!!int``, ``!!binary``,
  ``!!python/...``, ``!custom``) are refused.
* **Text stays as written.** Mapping keys are always the text written (``010:`` is the key
  ``'010'``). For the keys the caller names in ``text_keys`` (ids, titles, notes ...), a scalar
  value, or each scalar item of a list value, is returned as the text written, whatever it looks
  like: ``sample_id: 010`` is ``'010'``, ``version: 1.10`` is ``'1.10'``, ``id: yes`` is ``'yes'``.
  Only an empty value or ``~``/``null`` is ``None`` (missing). A list or mapping under a text key
  is returned as is, for the caller to refuse ("must be text").
* **Bounded messages.** Every problem is a ``WbcvError`` naming the file and line; quoted input
  goes through :func:`wbcv.base.errors.shown`.
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from wbcv.base.errors import WbcvError, clipped, shown

#: Largest YAML input read (bytes). A 2 MiB manifest lists some 40,000 samples; larger batches
#: belong in manifest.csv, which has no such limit.
MAX_YAML_BYTES: Final[int] = 2 * 1024 * 1024
#: Most nodes (scalars, lists, mappings, keys included) after alias expansion.
MAX_YAML_NODES: Final[int] = 500_000
#: Deepest nesting of lists and mappings (wbcv's files need 4).
MAX_YAML_DEPTH: Final[int] = 32

_STR: Final[str] = "tag:yaml.org,2002:str"
_INT: Final[str] = "tag:yaml.org,2002:int"
_FLOAT: Final[str] = "tag:yaml.org,2002:float"
_BOOL: Final[str] = "tag:yaml.org,2002:bool"
_NULL: Final[str] = "tag:yaml.org,2002:null"
_SEQ: Final[str] = "tag:yaml.org,2002:seq"
_MAP: Final[str] = "tag:yaml.org,2002:map"


class _Resolver(BaseResolver):
    """Implicit types of plain scalars: the YAML 1.2 core schema, minus octal and hex."""


_Resolver.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Resolver.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_Resolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+"
        r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _PyLoader(Reader, Scanner, Parser, Composer, _Resolver):
    """PyYAML's pure-Python parser and composer with our resolver (used when libyaml is missing)."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver.__init__(self)


_LOADER: type = _PyLoader
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _CLoader(CParser, _Resolver):
        """libyaml's parser and composer (about five times faster) with our resolver."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Resolver.__init__(self)

    _LOADER = _CLoader

_RESOLVER: Final[_Resolver] = _Resolver()


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _Reader:
    def __init__(self, path: Path, what: str, text_keys: Collection[str]) -> None:
        self.path = path
        self.what = what
        self.text_keys = frozenset(text_keys)
        self.built: dict[tuple[int, bool], Any] = {}

    def fail(self, node: Node | None, message: str) -> WbcvError:
        where = f" line {_line(node)}" if node is not None else ""
        return WbcvError(f"{self.path}{where}: {message}")

    # --- checks on the node graph, before anything is built -------------------------------------

    def check(self, root: Node) -> None:
        """Sizes, depth, cycles, tags, keys; iterative, so a deep document cannot overflow the stack."""
        size: dict[int, int] = {}
        height: dict[int, int] = {}
        open_nodes: set[int] = set()
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, finished = stack.pop()
            key = id(node)
            if finished:
                kids = _children(node)
                size[key] = 1 + sum(size[id(k)] for k in kids)
                height[key] = 1 + max((height[id(k)] for k in kids), default=0)
                open_nodes.discard(key)
                if size[key] > MAX_YAML_NODES:
                    raise self.fail(
                        node,
                        f"this value expands to more than {MAX_YAML_NODES:,} YAML nodes (through aliases '*name' "
                        f"repeating anchored values); a {self.what} is far smaller: write the values out or use "
                        "fewer aliases",
                    )
                if height[key] > MAX_YAML_DEPTH:
                    raise self.fail(
                        node,
                        f"lists and mappings nest more than {MAX_YAML_DEPTH} levels deep; "
                        f"a {self.what} needs at most 4",
                    )
                continue
            if key in size:
                continue
            self.check_node(node)
            open_nodes.add(key)
            stack.append((node, True))
            for kid in _children(node):
                if id(kid) in open_nodes:
                    raise self.fail(kid, "an alias refers to a value that contains it (a recursive alias)")
                if id(kid) not in size:
                    stack.append((kid, False))

    def check_node(self, node: Node) -> None:
        if isinstance(node, ScalarNode):
            plain = node.style in (None, "")
            expected = _RESOLVER.resolve(ScalarNode, node.value, (True, False)) if plain else _STR
            if node.tag not in (expected, _STR):
                raise self.fail(node, self._tag_message(node.tag))
            return
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                raise self.fail(node, self._tag_message(node.tag))
            return
        if node.tag != _MAP:
            raise self.fail(node, self._tag_message(node.tag))
        first: dict[str, int] = {}
        for k, _ in node.value:
            if not isinstance(k, ScalarNode):
                raise self.fail(k, "a key is a list or mapping; keys must be names")
            if k.value == "<<" and k.style in (None, ""):
                raise self.fail(
                    k,
                    "merge keys ('<<: *name') are not supported: a key written beside a merge silently replaces "
                    "the merged one; write the keys out",
                )
            name = str(k.value)
            if name in first:
                raise self.fail(
                    k,
                    f"key {shown(name)} appears twice in the same mapping (lines {first[name]} and {_line(k)}); "
                    "YAML would silently keep only the second: remove one",
                )
            first[name] = _line(k)

    @staticmethod
    def _tag_message(tag: str) -> str:
        short = tag.replace("tag:yaml.org,2002:", "!!")
        return f"explicit YAML tag {shown(short)} is not supported; write the value plainly (quote it to make it text)"

    # --- building Python values -------------------------------------------------------------------

    def build(self, node: Node, text: bool = False) -> Any:
        memo = (id(node), text)
        if memo in self.built:
            return self.built[memo]
        value: Any
        if isinstance(node, ScalarNode):
            value = self.scalar(node, text)
        elif isinstance(node, SequenceNode):
            value = [self.build(n, text) for n in node.value]
        else:
            value = {str(k.value): self.build(v, str(k.value) in self.text_keys) for k, v in node.value}
        self.built[memo] = value
        return value

    def scalar(self, node: ScalarNode, text: bool) -> Any:
        raw = str(node.value)
        tag = node.tag
        if tag == _NULL:
            return None
        if text or tag == _STR:
            return raw
        if tag == _BOOL:
            return raw.lower() == "true"
        if tag == _INT:
            try:
                return int(raw)
            except ValueError:  # more digits than Python converts
                raise self.fail(node, f"the number {shown(raw)} has too many digits") from None
        special = raw.lstrip("+-").lower()
        if special in (".inf", ".nan"):
            sign = -1.0 if raw.startswith("-") else 1.0
            return sign * math.inf if special == ".inf" else math.nan
        return float(raw)


def read_yaml(path: Path | str, what: str, *, text_keys: Collection[str] = (), max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read one YAML document from ``path`` with the guarantees in the module docstring.

    ``what`` names the kind of file in messages ("protocol", "manifest"). Returns ``None`` for an
    empty document. Raises ``WbcvError`` for every problem.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block or never end
            raise WbcvError(f"{path}: not a regular file; expected a YAML {what} file")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # never more, even from a file that grows or never ends
    except FileNotFoundError:
        raise WbcvError(f"{path}: {what} file does not exist") from None
    except OSError as e:
        raise WbcvError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise WbcvError(
            f"{path}: larger than {max_bytes / 1024 / 1024:g} MiB, the most wbcv reads as a YAML {what}; "
            "is it the right file?"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise WbcvError(
            f"{path} line {line}: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8; "
            f"save the {what} as UTF-8 text"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise WbcvError(f"{path} line {line}: contains a NUL character; expected a YAML {what} (text)")
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise WbcvError(f"{path}{where}: invalid YAML: {clipped(problem, 200)}") from None
    except yaml.YAMLError as e:
        raise WbcvError(f"{path}: invalid YAML: {clipped(str(e), 200)}") from None
    except RecursionError:  # only the pure-Python composer recurses (libyaml stops at 1,000 levels)
        raise WbcvError(f"{path}: lists and mappings nest too deeply; a {what} needs at most 4 levels") from None
    finally:
        loader.dispose()
    if root is None:
        return None
    reader = _Reader(path, what, text_keys)
    reader.check(root)
    return reader.build(root)


def number_hint(value: object) -> str:
    """A hint for a text that was probably meant as a number but is not plain decimal YAML."""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9.][0-9a-fA-FxXoObB_:.eE+-]*\s*", value):
        return (
            " (numbers are read as plain decimals: a leading zero, 0x, 0o, underscores or ':' make it text; "
            "write e.g. 10 or 0.5)"
        )
    return ""
