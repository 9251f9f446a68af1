"""A small model of what prometheus/statsd_exporter (the chart's `statsd` Deployment, v0.28.0) does with the
statsd lines Airflow sends: parse each line, map its name through the mapping config the chart renders
(ConfigMap `<release>-statsd`, key `mappings.yml`), and name the Prometheus series that come out.

Every rule below is read from the exporter's source at tag v0.28.0 (github.com/prometheus/statsd_exporter);
the file and function are cited where the rule is implemented. Nothing of its code is copied.

- Lines: `pkg/listener/listener.go` splits every UDP packet on "\\n"; `pkg/line/line.go` (`LineToEvents`,
  `parseNameAndTags`, `ParseDogStatsDTags`, `buildEvent`) turns one line into events. All four tag styles
  (DogStatsD `|#k:v`, InfluxDB `name,k=v`, Librato `name#k=v`, SignalFX `name[k=v]`) are on by default
  (`main.go`, flags `--statsd.parse-*-tags`, default true; the chart does not turn any off).
  Airflow with the chart's `[metrics]` (statsd_on, no `statsd_datadog_enabled`, no `statsd_influxdb_enabled`)
  sends no tags at all (`airflow/metrics/statsd_logger.py`: tags are only appended InfluxDB-style when
  `statsd_influxdb_enabled`), so every tagged `Stats.*(..., tags=...)` call arrives as a plain, unlabelled name.
- Types: `c` counter, `g` gauge (a leading +/- makes it relative), `ms` observer in seconds (value / 1000),
  `h`/`d` observer as is, `s` refused (`buildEvent`). `@rate` divides a counter, is ignored on a gauge and
  repeats an observation int(1/rate) times (`LineToEvents`).
- Mapping (`pkg/mapper/mapper.go`, `MetricMapper.InitFromYAMLString` and `GetMapping`):
  * every glob mapping is tried before any regex mapping, whatever their order in the file;
  * glob (`pkg/mapper/fsm/fsm.go`, `FSM.AddState`/`FSM.GetMapping`): the match is split on "."; a field
    `*` matches exactly one dot-separated field of the name (never part of one), any other field must be
    equal, the number of fields must be equal. With ordering on (the default: `defaults.glob_disable_ordering`
    false), of all globs that match, the one listed first wins. Quirk kept: a glob whose last state already
    exists in the state machine (an earlier glob passes through it, or the same match is listed twice) does
    not get a result there (`AddState` sets `Result` only on a new state), but takes over its priority;
  * glob substitutions (`pkg/mapper/fsm/formatter.go`, `NewTemplateFormatter`): `$N`/`${N}` is the N-th `*`
    capture; a reference that is not a plain number in 1..captures (`$1_x` reads as `${1_x}`) becomes "";
  * regex: Go `regexp` (RE2 syntax: no backreferences or lookarounds, word classes ASCII only; here Google's RE2
    through its Python binding, `re2`) with `FindStringSubmatchIndex`, i.e. a search anywhere in the name, NOT anchored (the
    chart's `airflow.scheduler_heartbeat` regex also matches `xairflowYscheduler_heartbeatZ`); the first regex
    mapping in file order that matches wins; `name` and label values are expanded with Go's
    `Regexp.ExpandString` (`$1`, `${1}`, `$name`, `$$`; `$1x` means `${1x}`; unknown references become "");
  * `match_metric_type` (counter/gauge/observer; `timer` = observer, `pkg/mapper/metric_type.go`) restricts a
    mapping to events of that type (glob: a separate state machine per type; regex: checked after the match);
  * `action: drop` drops the event (`pkg/exporter/exporter.go`, `handleEvent`).
- Naming (`pkg/exporter/exporter.go`, `handleEvent`; `pkg/mapper/escape.go`, `EscapeMetricName`): a mapped
  event is named `EscapeMetricName(mapping.name)` with the mapping's labels over the event's tag labels (the
  tags win with `honor_labels`); an unmapped one is named `EscapeMetricName(statsd name)` with its tag labels
  only: every character outside [a-zA-Z0-9_] becomes "_", a run of "-" after the first one is dropped, a
  leading digit gets a "_" in front.
- Series (`pkg/registry/registry.go`, `Registry.Get{Counter,Gauge,Histogram,Summary}`): an observer is a
  summary unless `observer_type: histogram` (mapping, else `defaults`); a summary exposes `name{quantile}`,
  `name_sum`, `name_count`; a histogram `name_bucket{le}`, `name_sum`, `name_count`. Counters keep their name
  (no `_total`: `main.go` serves `promhttp.Handler()`, the classic text format). The same name with another
  label set is fine; the same name with another type is refused (first type wins), as is a counter or gauge
  `x_sum`/`x_count`/`x_bucket` next to a non-counter `x`, and a summary/histogram whose `_sum`/`_count`
  (`_bucket`) name is taken by another type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import re2
import yaml

COUNTER, GAUGE, OBSERVER = "counter", "gauge", "observer"
METRIC_TYPES = (COUNTER, GAUGE, OBSERVER)

# pkg/mapper/mapper.go: what InitFromYAMLString accepts.
_STATSD_METRIC = r"[a-zA-Z_]([a-zA-Z0-9_\-])*"
_STATSD_METRIC_SUBSEQUENT = r"[a-zA-Z0-9_]([a-zA-Z0-9_\-])*"
_TEMPLATE_REPLACE = r"(\$\{?\d+\}?)"
GLOB_MATCH_RE = re.compile(rf"^(\*|{_STATSD_METRIC})(\.\*|\.{_STATSD_METRIC_SUBSEQUENT})*$")
METRIC_NAME_RE = re.compile(rf"^([a-zA-Z_]|{_TEMPLATE_REPLACE})([a-zA-Z0-9_]|{_TEMPLATE_REPLACE})*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")
# pkg/mapper/fsm/formatter.go: templateReplaceCaptureRE.
_GLOB_TEMPLATE_RE = re.compile(r"\$\{?([a-zA-Z0-9_\$]+)\}?")


def escape_metric_name(name: str) -> str:
    """pkg/mapper/escape.go, EscapeMetricName."""
    if not name:
        return ""
    out = ["_"] if "0" <= name[0] <= "9" else []
    previous = ""
    for char in name:
        if char.isascii() and (char.isalnum() or char == "_"):
            out.append(char)
        elif char == "-" and previous == "-":
            pass  # a second (third...) dash in a row is dropped; `previous` stays "-"
        else:
            out.append("_")
        previous = char
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# Lines -> events (pkg/line/line.go)


@dataclass(frozen=True)
class Event:
    name: str                 # the statsd name, tags removed
    type: str                 # counter | gauge | observer
    value: float              # observers from `ms` already in seconds
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    relative: bool = False    # a gauge sent as +N / -N
    statsd_type: str = ""     # c | g | ms | h | d


class LineError(ValueError):
    pass


def _parse_tag(tag: str, separator: str, labels: dict[str, str]) -> None:
    """line.go, parseTag: `k<sep>v`, key escaped; an empty or malformed tag is skipped (counted as an error)."""
    if separator in tag:
        key, value = tag.split(separator, 1)
        if key and value:
            labels[escape_metric_name(key)] = value


def _parse_name_tags(component: str, labels: dict[str, str]) -> None:
    """line.go, parseNameTags: comma-separated `k=v`."""
    for tag in component.split(","):
        if tag:
            _parse_tag(tag, "=", labels)


def _parse_name_and_tags(name: str, labels: dict[str, str]) -> str:
    """line.go, parseNameAndTags: SignalFX `[...]` first, then the first `#` (Librato) or `,` (InfluxDB)."""
    start, end = name.find("["), name.find("]")
    if start != -1 and end != -1:
        _parse_name_tags(name[start + 1:end], labels)
        return name[:start] + name[end + 1:]
    if (start != -1) != (end != -1):
        return name  # one bracket only: left as it is
    for index, char in enumerate(name):
        if char in "#,":
            _parse_name_tags(name[index + 1:], labels)
            return name[:index]
    return name


def _parse_dogstatsd_tags(component: str, labels: dict[str, str]) -> None:
    """line.go, ParseDogStatsDTags: comma-separated `k:v`, each may start with `#`."""
    for tag in component.split(","):
        if tag:
            _parse_tag(tag[1:] if tag.startswith("#") else tag, ":", labels)


def _build_event(statsd_type: str, name: str, value: float, relative: bool, labels: dict[str, str]) -> Event:
    """line.go, buildEvent."""
    if statsd_type == "c":
        return Event(name, COUNTER, value, dict(labels), False, statsd_type)
    if statsd_type == "g":
        return Event(name, GAUGE, value, dict(labels), relative, statsd_type)
    if statsd_type == "ms":
        return Event(name, OBSERVER, value / 1000, dict(labels), False, statsd_type)
    if statsd_type in ("h", "d"):
        return Event(name, OBSERVER, value, dict(labels), False, statsd_type)
    if statsd_type == "s":
        raise LineError("no support for StatsD sets")
    raise LineError(f"bad stat type {statsd_type}")


def parse_line(line: str) -> list[Event]:
    """line.go, LineToEvents: one statsd line -> its events (malformed samples are skipped, as the exporter does,
    except that a wholly malformed line raises LineError so a test sees it)."""
    if line == "":
        return []
    if ":" not in line or line.startswith(":"):
        raise LineError(f"malformed line: {line!r}")
    raw_name, rest = line.split(":", 1)
    labels: dict[str, str] = {}
    name = _parse_name_and_tags(raw_name, labels)
    dogstatsd = "|#" in rest
    if dogstatsd and labels:
        raise LineError(f"mixed tagging styles: {line!r}")
    parts = rest.split("|", 2)
    if len(parts) < 2:
        raise LineError(f"not enough '|'-delimited parts after the first ':': {line!r}")
    if ":" in parts[0]:
        # DogStatsD extended aggregation: `name:1:2:3|ms|...`, timers/histograms/distributions only.
        if parts[1] not in ("ms", "h", "d"):
            raise LineError(f"invalid extended aggregate type: {line!r}")
        suffix = rest.split("|", 1)[1]
        samples = [f"{value}|{suffix}" for value in parts[0].split(":")]
    elif dogstatsd:
        samples = [rest]
    else:
        samples = rest.split(":")

    events: list[Event] = []
    for sample in samples:
        components = sample.split("|")
        if not 2 <= len(components) <= 4:
            continue  # malformed_component
        value_text, statsd_type = components[0], components[1]
        relative = value_text.startswith(("+", "-"))
        try:
            value = float(value_text)
        except ValueError:
            continue  # malformed_value
        if any(component == "" for component in components[2:]):
            continue  # malformed_component
        repeat = 1
        for component in components[2:]:
            if component[0] == "@":
                try:
                    rate = float(component[1:])
                except ValueError:
                    rate = 0.0  # invalid_sample_factor; Go goes on with 0, then 1
                rate = rate or 1.0
                if statsd_type == "c":
                    value /= rate
                elif statsd_type in ("ms", "h", "d"):
                    repeat = int(1 / rate)
            elif component[0] == "#":
                _parse_dogstatsd_tags(component[1:], labels)
            # anything else: invalid_sample_factor, ignored
        try:
            events.extend(_build_event(statsd_type, name, value, relative, labels) for _ in range(repeat))
        except LineError:
            continue  # illegal_event
    return events


def parse_packet(packet: bytes) -> list[Event]:
    """pkg/listener/listener.go (StatsDUDPListener.HandlePacket): a packet is lines separated by "\\n"."""
    events: list[Event] = []
    for line in packet.decode("utf-8", errors="replace").split("\n"):
        events.extend(parse_line(line))
    return events


# ---------------------------------------------------------------------------------------------------------
# The mapping (pkg/mapper)


@dataclass
class Mapping:
    match: str
    name: str
    labels: dict[str, str]
    match_type: str            # glob | regex
    match_metric_type: str     # "" | counter | gauge | observer
    action: str                # map | drop
    observer_type: str         # "" | summary | histogram
    honor_labels: bool
    index: int                 # position in the file
    regex: Optional[Any] = None  # an re2 pattern
    captures: int = 0          # glob: number of `*`


def _glob_format(template: str, captures: list[str], capture_count: int) -> str:
    """fsm/formatter.go, NewTemplateFormatter + Format."""
    def replace(match: re.Match) -> str:
        reference = match.group(1)
        if reference.isdigit() and 1 <= int(reference) <= capture_count:
            return captures[int(reference) - 1]
        return ""
    return _GLOB_TEMPLATE_RE.sub(replace, template)


def _go_expand(template: str, match: Any) -> str:
    """Go regexp.(*Regexp).ExpandString: `$$`, `$name`, `${name}`; `name` is the longest run of
    [A-Za-z0-9_]; a number is a group index, anything else a named group; unknown -> ""."""
    out, index = [], 0
    while index < len(template):
        char = template[index]
        if char != "$":
            out.append(char)
            index += 1
            continue
        rest = template[index + 1:]
        if rest.startswith("$"):
            out.append("$")
            index += 2
            continue
        braced = re.match(r"\{([A-Za-z0-9_]+)\}", rest)
        bare = re.match(r"[A-Za-z0-9_]+", rest)
        if braced:
            reference, width = braced.group(1), len(braced.group(0))
        elif bare and not rest.startswith("{"):
            reference, width = bare.group(0), len(bare.group(0))
        else:
            out.append("$")  # malformed: the `$` is kept as text
            index += 1
            continue
        value = None
        if reference.isdigit() and not (reference.startswith("0") and len(reference) > 1):  # no leading zeros
            number = int(reference)
            if number <= (match.re.groups or 0):
                value = match.group(number)
        elif not reference.isdigit() and reference in match.re.groupindex:
            value = match.group(reference)
        out.append(value or "")
        index += 1 + width
    return "".join(out)


class _State:
    __slots__ = ("transitions", "result", "priority")

    def __init__(self) -> None:
        self.transitions: dict[str, _State] = {}
        self.result: Optional[Mapping] = None
        self.priority = 0


@dataclass(frozen=True)
class MapResult:
    matched: bool
    name: str                     # the Prometheus name (escaped)
    labels: dict[str, str]
    mapping: Optional[Mapping]
    dropped: bool = False


class MappingConfig:
    """A parsed `mappings.yml` (the `mappings:` list and `defaults:`)."""

    def __init__(self, document: dict[str, Any]):
        document = document or {}
        defaults = document.get("defaults") or {}
        self.default_observer_type = str(defaults.get("observer_type") or defaults.get("timer_type") or "")
        default_match_type = str(defaults.get("match_type") or "glob")
        if defaults.get("glob_disable_ordering"):
            raise NotImplementedError("glob_disable_ordering is not modelled (the chart does not set it)")
        self.mappings: list[Mapping] = []
        self._roots = {metric_type: _State() for metric_type in METRIC_TYPES}
        self._states_count = 0
        for index, entry in enumerate(document.get("mappings") or []):
            self.mappings.append(self._add(index, entry, default_match_type))

    @classmethod
    def from_yaml(cls, text: str) -> "MappingConfig":
        return cls(yaml.safe_load(text))

    @classmethod
    def chart_values(cls, default_mappings_yaml: str, extra_mappings: Iterable[dict] = (),
                     override_mappings: Iterable[dict] = ()) -> "MappingConfig":
        """What the chart's templates/configmaps/statsd-configmap.yaml renders: the override list alone if set,
        else the default file's mappings followed by `statsd.extraMappings`."""
        override = list(override_mappings)
        if override:
            return cls({"mappings": override})
        document = yaml.safe_load(default_mappings_yaml) or {}
        document["mappings"] = [*(document.get("mappings") or []), *extra_mappings]
        return cls(document)

    def _add(self, index: int, entry: dict, default_match_type: str) -> Mapping:
        labels = {str(k): str(v) for k, v in (entry.get("labels") or {}).items()}
        for key in labels:
            if not LABEL_NAME_RE.match(key):
                raise ValueError(f"mapping {index}: invalid label key: {key}")
        name = str(entry.get("name") or "")
        if not name:
            raise ValueError(f"mapping {index}: metric mapping didn't set a metric name")
        if not METRIC_NAME_RE.match(name):
            raise ValueError(f"mapping {index}: metric name {name!r} is not a valid template")
        match_type = str(entry.get("match_type") or default_match_type)
        if match_type not in ("glob", "regex"):
            raise ValueError(f"mapping {index}: invalid match type {match_type!r}")
        metric_type = str(entry.get("match_metric_type") or "")
        metric_type = OBSERVER if metric_type == "timer" else metric_type
        if metric_type not in ("", *METRIC_TYPES):
            raise ValueError(f"mapping {index}: invalid metric type {metric_type!r}")
        mapping = Mapping(
            match=str(entry["match"]), name=name, labels=labels, match_type=match_type,
            match_metric_type=metric_type, action=str(entry.get("action") or "map"),
            observer_type=str(entry.get("observer_type") or entry.get("timer_type") or self.default_observer_type),
            honor_labels=bool(entry.get("honor_labels")), index=index)
        if match_type == "glob":
            if not GLOB_MATCH_RE.match(mapping.match):
                raise ValueError(f"mapping {index}: invalid match: {mapping.match}")
            mapping.captures = self._add_glob(mapping)
        else:
            try:
                mapping.regex = re2.compile(mapping.match)
            except re2.error as error:
                raise ValueError(f"mapping {index}: invalid regex {mapping.match!r}: {error}") from None
        return mapping

    def _add_glob(self, mapping: Mapping) -> int:
        """fsm.go, FSM.AddState (the result is set only on a state it creates; the priority on every final one)."""
        fields = mapping.match.split(".")
        roots = [self._roots[mapping.match_metric_type]] if mapping.match_metric_type else \
            [self._roots[t] for t in METRIC_TYPES]
        finals = []
        for state in roots:
            for position, name in enumerate(fields):
                following = state.transitions.get(name)
                if following is None:
                    following = _State()
                    state.transitions[name] = following
                    if position == len(fields) - 1:
                        following.result = mapping
                state = following
            finals.append(state)
        for state in finals:
            state.priority = self._states_count
        self._states_count += 1
        return fields.count("*")

    def _glob(self, name: str, metric_type: str) -> tuple[Optional[Mapping], list[str]]:
        """fsm.go, FSM.GetMapping with ordering: of every matching glob, the one with the lowest priority."""
        fields = name.split(".")
        best: list[Any] = [None, None, []]   # priority, mapping, captures

        def walk(state: _State, position: int, captures: list[str]) -> None:
            if position == len(fields):
                if state.result is not None and (best[0] is None or state.priority < best[0]):
                    best[:] = [state.priority, state.result, captures]
                return
            literal = state.transitions.get(fields[position])
            if literal is not None:
                walk(literal, position + 1, captures)
            star = state.transitions.get("*")
            if star is not None:
                walk(star, position + 1, [*captures, fields[position]])

        walk(self._roots[metric_type], 0, [])
        return best[1], best[2]

    def map(self, name: str, metric_type: str, tag_labels: Optional[dict[str, str]] = None) -> MapResult:
        """mapper.go GetMapping + exporter.go handleEvent: the Prometheus name and labels of one event."""
        tag_labels = dict(tag_labels or {})
        mapping, labels = None, None
        glob, captures = self._glob(name, metric_type)
        if glob is not None:
            mapping = glob
            mapped_name = _glob_format(glob.name, captures, glob.captures)
            labels = {k: _glob_format(v, captures, glob.captures) for k, v in glob.labels.items()}
        else:
            for candidate in self.mappings:
                if candidate.regex is None:
                    continue
                found = candidate.regex.search(name)
                if not found:
                    continue
                if candidate.match_metric_type and candidate.match_metric_type != metric_type:
                    continue
                mapping = candidate
                mapped_name = _go_expand(candidate.name, found)
                labels = {k: _go_expand(v, found) for k, v in candidate.labels.items()}
                break
        if mapping is None:
            return MapResult(False, escape_metric_name(name), tag_labels, None)
        if mapping.action == "drop":
            return MapResult(True, "", {}, mapping, dropped=True)
        merged = dict(tag_labels)
        for key, value in labels.items():
            if mapping.honor_labels and key in merged:
                continue
            merged[key] = value
        return MapResult(True, escape_metric_name(mapped_name), merged, mapping,
                         dropped=not mapped_name)  # an empty name: "empty_metric_name", dropped


# ---------------------------------------------------------------------------------------------------------
# The exporter's registry (pkg/registry/registry.go)


@dataclass(frozen=True)
class Outcome:
    """What became of one event."""
    event: Event
    result: MapResult
    prometheus_type: str = ""     # counter | gauge | summary | histogram; "" when dropped
    dropped: str = ""             # why: drop action, empty name, negative counter, type conflict

    @property
    def series(self) -> list[tuple[str, tuple[str, ...]]]:
        """The exposed series names with their label keys (sorted)."""
        keys = tuple(sorted(self.result.labels))
        name = self.result.name
        if self.dropped:
            return []
        if self.prometheus_type == "summary":
            return [(name, tuple(sorted((*keys, "quantile")))), (f"{name}_sum", keys), (f"{name}_count", keys)]
        if self.prometheus_type == "histogram":
            return [(f"{name}_bucket", tuple(sorted((*keys, "le")))), (f"{name}_sum", keys), (f"{name}_count", keys)]
        return [(name, keys)]


class Exporter:
    """Feeds events through a MappingConfig and a model of the registry, in arrival order."""

    def __init__(self, config: MappingConfig):
        self.config = config
        self.types: dict[str, str] = {}       # Prometheus name -> type registered first

    def _conflicts(self, name: str, prometheus_type: str) -> bool:
        return name in self.types and self.types[name] != prometheus_type

    def handle(self, event: Event) -> Outcome:
        result = self.config.map(event.name, event.type, event.labels)
        if result.dropped:
            return Outcome(event, result, dropped="drop action" if result.mapping and
                           result.mapping.action == "drop" else "empty metric name")
        if event.type == COUNTER:
            prometheus_type = "counter"
            if event.value < 0:
                return Outcome(event, result, dropped="negative counter")
        elif event.type == GAUGE:
            prometheus_type = "gauge"
        else:
            observer = (result.mapping.observer_type if result.mapping else "") or self.config.default_observer_type
            prometheus_type = "histogram" if observer == "histogram" else "summary"
        name = result.name
        conflict = self._conflicts(name, prometheus_type)
        if prometheus_type in ("counter", "gauge"):
            for suffix in ("_bucket", "_count", "_sum"):
                if name.endswith(suffix) and self._conflicts(name[: -len(suffix)], "counter"):
                    conflict = True
        else:
            suffixes = ("_sum", "_count", "_bucket") if prometheus_type == "histogram" else ("_sum", "_count")
            conflict = conflict or any(self._conflicts(name + suffix, prometheus_type) for suffix in suffixes)
        if conflict:
            return Outcome(event, result, dropped=f"{name} is already registered as {self.types.get(name, 'another')}")
        self.types.setdefault(name, prometheus_type)
        return Outcome(event, result, prometheus_type)

    def feed(self, events: Iterable[Event]) -> list[Outcome]:
        return [self.handle(event) for event in events]
