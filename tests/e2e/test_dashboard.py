"""
The Grafana dashboard (C{contrib/grafana/udptunnel.json}) against the
metrics the installed twistd really serves, so that the dashboard cannot
drift from the code: a panel that queries a series no tunnel exports (a
misspelt or renamed metric, a label value that does not exist) fails here,
and so does a series the code exports that no panel shows.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from typing import Any, NamedTuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY
from tests.support.ends import FourTunnels
from tests.support.net import TIMEOUT
from tests.support.processes import STOPPED_BY_SIGTERM

DASHBOARD = os.path.join(REPOSITORY,
                         "contrib", "grafana", "udptunnel.json")

#: Labels Prometheus adds to every series it scrapes: not in the exposition.
TARGET_LABELS = frozenset({"job", "instance"})

#: Words of PromQL that are neither metrics nor functions (a function is
#: told by the "(" after it).
KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"})

#: Keywords whose parenthesised list is of label names, not expressions.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[a-zA-Z_:][\w:]*)
  | (?P<operator>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]@])
""", re.VERBOSE)


class Selector(NamedTuple):
    """
    One vector selector of a PromQL expression: the metric's name and its
    label matchers, as C{(label, operator, value)}.
    """

    metric: str
    matchers: tuple[tuple[str, str, str], ...]


def tokens(expr: str) -> list[tuple[str, str]]:
    """
    The tokens of C{expr} as C{(kind, text)}, blanks left out; anything
    the tokenizer does not know is an error, not skipped.
    """
    found, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position:]!r} in {expr!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group()))
    return found


def selectors(expr: str) -> Iterator[Selector]:
    """
    Every vector selector in C{expr}: the identifiers that are not
    followed by "(" (functions and aggregations) or by C{by} or
    C{without} (aggregations, C{sum by (...) (...)}), are not keywords, and
    are not in a C{by (...)}, C{on (...)}... list of label names (nor in
    braces: label names; nor in brackets: ranges), each with its
    matchers.
    """
    found = tokens(expr)
    index = 0

    def following(at: int) -> str:
        return found[at][1] if at < len(found) else ""

    def skipTo(at: int, closing: str) -> int:
        while at < len(found) and found[at][1] != closing:
            at += 1
        return at + 1

    while index < len(found):
        kind, text = found[index]
        if text == "[":
            index = skipTo(index, "]")
        elif kind == "ident" and text in LABEL_LISTS and following(index + 1) == "(":
            index = skipTo(index + 1, ")")
        elif kind == "ident" and following(index + 1) in ("(", "by", "without"):
            index += 1  # a function, or an aggregation: sum by (...) (...)
        elif kind == "ident" and text.lower() not in KEYWORDS:
            matchers: list[tuple[str, str, str]] = []
            index += 1
            if following(index) == "{":
                end = skipTo(index, "}")
                inside = [token for token in found[index + 1:end - 1] if token[1] != ","]
                for at in range(0, len(inside), 3):
                    (_, label), (_, operator), (valueKind, value) = inside[at:at + 3]
                    if valueKind != "string":
                        raise ValueError(f"not a label matcher: {label} {operator} {value}")
                    matchers.append((label, operator, value[1:-1]))
                index = end
            yield Selector(text, tuple(matchers))
        elif text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        else:
            index += 1


def groupingLabels(expr: str) -> set[str]:
    """
    The label names of C{expr}'s C{by (...)}, C{without (...)},
    C{on (...)}... lists.
    """
    found, labels = tokens(expr), set()
    for index, (kind, text) in enumerate(found[:-1]):
        if kind == "ident" and text in LABEL_LISTS and found[index + 1][1] == "(":
            for _, label in found[index + 2:]:
                if label == ")":
                    break
                if label != ",":
                    labels.add(label)
    return labels


def panelsOf(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """
    Every panel that queries, including those inside collapsed rows.
    """
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panelsOf(panel)
        else:
            yield panel


def everyPanel(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """
    Every panel, rows included, and those nested in rows (a collapsed row
    holds its panels).
    """
    for panel in dashboard["panels"]:
        yield panel
        if panel["type"] == "row":
            yield from everyPanel(panel)


def loadDashboard() -> dict[str, Any]:
    with open(DASHBOARD) as file:
        return json.load(file)


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def dashboardSelectors(dashboard: dict[str, Any]) -> list[tuple[str, Selector]]:
    """
    Every selector the dashboard queries, with where (a panel's title, or
    a variable's name), the variables' included.
    """
    found = []
    for panel in panelsOf(dashboard):
        for target in panel["targets"]:
            for selector in selectors(target["expr"]):
                found.append((panel["title"], selector))
    return found + variableSelectors(dashboard)


def variableSelectors(dashboard: dict[str, Any]) -> list[tuple[str, Selector]]:
    """
    The selectors of the variables' C{label_values(SELECTOR, LABEL)}, LABEL
    added as a matcher (the label must exist, or the variable lists
    nothing).
    """
    found = []
    for name, variable in variables(dashboard).items():
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match is not None, f"variable {name}: not label_values(METRIC, LABEL): {query}"
        for selector in selectors(match.group(1)):
            label = (match.group(2), "=~", ".+")
            found.append((f"variable {name}", selector._replace(
                matchers=selector.matchers + (label,))))
    return found


class ExtractorTests(SynchronousTestCase):
    """
    The name extractor the live test relies on: it finds the metrics of an
    expression and nothing else.
    """

    def test_metricsOnly(self) -> None:
        """
        Out of an expression with aggregations, functions, ranges, a subquery,
        C{offset}, C{bool} and label lists, only the metrics' selectors are
        taken, each with its matchers; the grouping labels are those of the
        C{by}, C{on}, C{group_left} and C{ignoring} lists.
        """
        expr = ('sum by (instance, reason) (rate(udptunnel_a_total{tunnel=~"$tunnel", '
                'reason="kernel-overflow"}[$__rate_interval])) > 0 and on (job) '
                'group_left(version) udptunnel_b_info offset 5m / ignoring(x) '
                'histogram_quantile(0.9, udptunnel_c{le!="+Inf"}[5m:1m]) * bool 2')
        self.assertEqual(list(selectors(expr)), [
            Selector("udptunnel_a_total", (("tunnel", "=~", "$tunnel"),
                                           ("reason", "=", "kernel-overflow"))),
            Selector("udptunnel_b_info", ()),
            Selector("udptunnel_c", (("le", "!=", "+Inf"),)),
        ])
        self.assertEqual(groupingLabels(expr), {"instance", "reason", "job", "version", "x"})

    def test_unknownText(self) -> None:
        """
        What the tokenizer cannot read is an error, so a query it
        misunderstands cannot pass as "no metrics".
        """
        with self.assertRaises(ValueError):
            list(selectors("rate(udptunnel_a_total[5m]) ? 1"))
        with self.assertRaises(ValueError):
            list(selectors('{__name__="udptunnel_a_total"}'))


class ModelTests(SynchronousTestCase):
    """
    The file is a dashboard Grafana imports: a current schema, panels that
    query the chosen data source, and the variables every query uses.
    """

    def setUp(self) -> None:
        self.dashboard = loadDashboard()

    def test_model(self) -> None:
        """
        The dashboard has schema 36 or later, the uid C{udptunnel}, at least ten
        panels, each titled, within the 24-column grid, and querying the
        C{${datasource}} variable with non-blank expressions; every panel's
        id, rows' and those of panels nested in rows included, is unique.
        """
        dashboard = self.dashboard
        self.assertGreaterEqual(dashboard["schemaVersion"], 36)
        self.assertEqual(dashboard["uid"], "udptunnel")
        panels = list(panelsOf(dashboard))
        self.assertGreaterEqual(len(panels), 10)
        ids = [panel["id"] for panel in everyPanel(dashboard)]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in panels:
            self.assertTrue(panel["title"])
            self.assertEqual(set(panel["gridPos"]), {"h", "w", "x", "y"}, panel["title"])
            self.assertLessEqual(panel["gridPos"]["x"] + panel["gridPos"]["w"], 24)
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                self.assertTrue(target["expr"].strip(), panel["title"])
                self.assertEqual(target["datasource"]["uid"], "${datasource}")

    def test_variables(self) -> None:
        """
        The data source is a variable (so the file imports and provisions
        as it is); C{tunnel} is multi-valued with C{.*} for All, which also
        matches the series of a single tunnel, which have no C{tunnel}
        label.
        """
        found = variables(self.dashboard)
        self.assertEqual((found["datasource"]["type"], found["datasource"]["query"]),
                         ("datasource", "prometheus"))
        tunnel = found["tunnel"]
        self.assertEqual((tunnel["type"], tunnel["multi"], tunnel["includeAll"],
                          tunnel["allValue"]), ("query", True, True, ".*"))
        self.assertIn("udptunnel_to_tunnel_datagrams_total", tunnel["query"])

    def test_everyQueryFiltersByTunnel(self) -> None:
        """
        Every selector of every panel is filtered by the variables (the
        build is the process's, and has no tunnel label).
        """
        for where, selector in dashboardSelectors(self.dashboard):
            if where.startswith("variable "):
                continue
            wanted = {("job", "=~", "$job"), ("instance", "=~", "$instance")}
            if selector.metric != "udptunnel_build_info":
                wanted.add(("tunnel", "=~", "$tunnel"))
            self.assertLessEqual(wanted, set(selector.matchers), (where, selector))


class LiveTests(FourTunnels):
    """
    The installed twistd runs four tunnels as a user would, a one-link pair
    (a phantom server, a client with a fixed peer) and a sessions pair, so
    that every kind of series exists; after some traffic, every metric and
    label the dashboard queries is in a scrape of C{/metrics}.
    """

    def servedSamples(self) -> dict[str, list[dict[str, str]]]:
        """
        The labels of every sample served, by sample name (a counter's
        C{_total}, an info's C{_info}: the names PromQL sees).
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics",
                                    timeout=TIMEOUT) as response:
            text = response.read().decode()
        samples: dict[str, list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample.labels)
        return samples

    def test_everyQueriedMetricExists(self) -> None:
        """
        Each selector's metric is served, with the labels it matches on
        (and the values it matches with C{=}), and with a C{tunnel} label;
        each label a query groups by or a legend shows is on one of its
        metrics; each series served is queried by some panel.
        """
        _, process, _ = self.startFourTunnels()
        served = self.servedSamples()

        queried = dashboardSelectors(loadDashboard())
        names = {selector.metric for _, selector in queried}
        # An extractor that finds little would check little.
        self.assertGreaterEqual(len(names), 15, sorted(names))
        for where, selector in queried:
            samples = served.get(selector.metric)
            self.assertIsNotNone(samples, f"{where}: {selector.metric} is not exported")
            assert samples is not None
            for label, operator, value in selector.matchers:
                if label in TARGET_LABELS:
                    continue
                values = {sample[label] for sample in samples if label in sample}
                self.assertTrue(values, f"{where}: {selector.metric} has no label {label}")
                if operator == "=" and "$" not in value:
                    self.assertIn(value, values,
                                  f'{where}: no {selector.metric}{{{label}="{value}"}}')
            if selector.metric != "udptunnel_build_info":
                tunnels = {sample.get("tunnel") for sample in samples}
                self.assertLessEqual(tunnels, {"natbox", "relay", "dns-stub", "dns-relay"},
                                     f"{where}: {selector.metric}")

        # The labels a query groups by or a legend shows: on one of its metrics.
        for panel in panelsOf(loadDashboard()):
            for target in panel["targets"]:
                used = groupingLabels(target["expr"]) | set(
                    re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
                have = set(TARGET_LABELS).union(*(
                    sample for selector in selectors(target["expr"])
                    for sample in served[selector.metric]))
                self.assertLessEqual(used, have, f"{panel['title']}: {target['expr']}")

        # The other way: no series the code exports is left off the dashboard.
        self.assertEqual(set(served) - names, set(), "exported but on no panel")
        self.assertIn(self.stop(process), STOPPED_BY_SIGTERM)
        self.assertNotIn("Traceback", self.output(process))
