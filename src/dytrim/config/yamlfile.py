"""The one YAML reader of every YAML a user gives (config files, presets, `--set` values, a run's config.yaml
read back by report / dynamics / eval / resume): bounded, strict, and safe to quote in an error message.

PyYAML's `safe_load` never runs code, but it has no bound: an alias bomb (`&a [x, x, ...]`, `&b [*a, *a, ...]`,
...) composes in microseconds into a graph of shared nodes that expands to 10^9 values once anything walks or
formats it (a 500-byte file: minutes of CPU and GBs of memory before an error message appeared), and a key
written twice silently keeps the last value. So this reader

- reads at most MAX_BYTES (a larger file, a folder, a FIFO or device is refused before reading);
- composes the document into nodes (anchors and aliases still shared, nothing expanded), refuses nesting deeper
  than MAX_DEPTH while composing, then counts the values the document expands to (each shared node counted once
  per use, memoised, so counting costs the size of the file, not of the expansion) and refuses more than
  MAX_VALUES, or an alias inside its own anchor, BEFORE any value is constructed;
- refuses a key written twice in one mapping (a duplicated section too), naming the key, its line and the
  line it first appeared on (a `<<` merge key may still be overridden: that is what merging is for);
- formats values in messages with `shown`, which never walks more than a few items of a value and caps the text.

Every refusal is a ConfigError that names the source and, where there is one, the line.
"""

from __future__ import annotations

import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dytrim.config.schema import ConfigError

MAX_BYTES = 1 << 20  # a config file of 1 MiB is ~20,000 lines: ours are under 100
MAX_VALUES = 10_000  # scalars + lists + mappings after alias expansion (a full resolved config: ~250); composing
#   that many nodes takes ~0.3 s on a busy core, so even a refused file costs little
MAX_DEPTH = 64  # nesting of lists / mappings (a config: 2)
MAX_SHOWN = 120  # characters of a value quoted in an error message

_MERGE = "tag:yaml.org,2002:merge"
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """repr(value) for a message: at most a few items of each level (never the whole of a large or shared value)
    and at most `limit` characters."""
    return capped(_REPR.repr(value), limit)


def capped(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut to at most `limit` characters (a marker shows where)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Refused(Exception):
    def __init__(self, problem: str, node_or_mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = getattr(node_or_mark, "start_mark", node_or_mark)


# libyaml's scanner and parser (C) where PyYAML has it: PyYAML's pure-Python scanner took ~1 min over a 600 KB list
# on a busy 2-core machine, libyaml ~3 s; the composer stays PyYAML's Python one, so that it can count (and it pulls
# events lazily: a file refused after MAX_VALUES nodes is not scanned further).
try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = None


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


class _BoundedLoader(yaml.composer.Composer, _Parser or _PyParser, yaml.constructor.SafeConstructor,  # type: ignore
                     yaml.resolver.Resolver):
    """The safe loader with a composer that refuses more than MAX_VALUES nodes and nesting deeper than MAX_DEPTH
    while it composes (it recurses), so that composing is bounded too, before any alias is followed."""

    def __init__(self, stream: str) -> None:
        (_Parser or _PyParser).__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            if self._nodes > MAX_VALUES:
                raise _Refused(f"more than {MAX_VALUES:,} values (a whole config holds a few hundred)",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _key_value(loader: yaml.SafeLoader, node: Node) -> Any:
    """A mapping key as the dict will hold it (1, '1' and true are different keys; 1 and 1.0 are one, as in a
    dict); a list or mapping used as a key compares by identity (PyYAML refuses those anyway)."""
    if isinstance(node, ScalarNode):
        value = loader.construct_object(node, deep=True)
        try:
            hash(value)
            return value
        except TypeError:  # pragma: no cover - scalars are hashable
            pass
    return ("<node>", id(node))


def _check(loader: yaml.SafeLoader, root: Node) -> None:
    """Count the values `root` expands to (refused above MAX_VALUES, or if an alias sits inside its own anchor)
    and refuse a key written twice, before anything is constructed."""
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (values it expands to, its height)
    open_: set[int] = set()

    def visit(node: Node, depth: int, path: str) -> tuple[int, int]:
        if id(node) in size:
            count, height = size[id(node)]
        else:
            if id(node) in open_:
                raise _Refused("an alias refers to the anchor it sits in (a recursive value)", node)
            open_.add(id(node))
            count, height = 1, 1
            if isinstance(node, SequenceNode):
                for i, child in enumerate(node.value):
                    c, h = visit(child, depth + 1, f"{path}[{i}]")
                    count, height = count + c, max(height, h + 1)
            elif isinstance(node, MappingNode):
                _no_duplicate_keys(loader, node, path)
                for key_node, child in node.value:
                    name = key_node.value if isinstance(key_node, ScalarNode) else "?"
                    ck, hk = visit(key_node, depth + 1, path)
                    c, h = visit(child, depth + 1, f"{path}.{name}" if path else str(name))
                    count, height = count + ck + c, max(height, hk + 1, h + 1)
            open_.discard(id(node))
            size[id(node)] = (count, height)
        if count > MAX_VALUES:
            raise _Refused(f"the value {'of ' + repr(path) + ' ' if path else ''}expands to more than {MAX_VALUES:,} "
                           "values (anchors and aliases repeat them); write the values out or use fewer aliases", node)
        if depth + height > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (through aliases)", node)
        return count, height

    visit(root, 0, "")


def _no_duplicate_keys(loader: yaml.SafeLoader, node: MappingNode, path: str) -> None:
    first: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            continue
        key = _key_value(loader, key_node)
        line = key_node.start_mark.line + 1
        if key in first:
            name = capped(str(key_node.value if isinstance(key_node, ScalarNode) else key), 60)
            dotted = f"{path}.{name}" if path else name
            what = "section" if isinstance(value_node, MappingNode) else "key"
            raise _Refused(f"{what} '{dotted}' appears twice (first at line {first[key]}); YAML would silently "
                           f"keep the last one: {'merge the two sections' if what == 'section' else 'keep one'}",
                           key_node)
        first[key] = line


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text under the bounds above; `source` starts every error message (e.g. "--config: 'a.yaml'")."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters of YAML; at most {MAX_BYTES:,} (1 MiB) are read")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(loader, node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError(f"{source}{_where(exc.mark)}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.composer.ComposerError) and exc.context and exc.problem:
            problem = f"{exc.context}, {exc.problem}"  # e.g. expected a single document, but found another
        problem = capped(problem, 200)
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem += " (only plain YAML values are read; Python tags are refused)"
        raise ConfigError(f"{source}{_where(mark)}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({capped(str(exc), 200)})") from exc
    except (ValueError, OverflowError) as exc:  # e.g. an int of more than 4300 digits
        raise ConfigError(f"{source}: a value cannot be read ({capped(str(exc), 200)})") from exc
    finally:
        loader.dispose()


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def read_yaml_file(path: str | Path, what: str) -> Any:
    """A YAML file read under the bounds above. Every way it can be wrong is a ConfigError naming `what` and the
    file: missing, a folder, not a regular file (a FIFO would block), over MAX_BYTES, unreadable, not UTF-8, or
    any refusal of `load_yaml_text`."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file '{p}'") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read '{p}' ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what}: '{p}' is a folder; give a YAML file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what}: '{p}' is not a regular file (a pipe or device); give a YAML file")
    if st.st_size > MAX_BYTES:
        raise ConfigError(f"{what}: '{p}' is {st.st_size:,} bytes; a config file may hold at most {MAX_BYTES:,} "
                          "bytes (1 MiB)")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # the file may have grown since stat
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read '{p}' ({getattr(exc, 'strerror', None) or exc})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{what}: '{p}' holds more than {MAX_BYTES:,} bytes (1 MiB); a config file may hold at most "
                          "that")
    return load_yaml_text(text, f"{what}: '{p}'")
