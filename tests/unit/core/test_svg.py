"""The inline SVG line chart: valid XML, scaled, escaped, accessible."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pacslb.core.svg import Line, human, line_chart

NS = "{http://www.w3.org/2000/svg}"


def test_chart_is_valid_svg_with_title_and_points() -> None:
    svg = line_chart(
        "Web <VIP> & co",
        [Line("Srv1", [(0, 0), (50, 5), (100, 10)]), Line("Srv2 <b>", [(0, 1), (100, 1)])],
        start=0,
        end=100,
        width=300,
        height=120,
    )
    root = ET.fromstring(svg)  # parses: everything was escaped
    assert root.tag == f"{NS}svg" and root.get("role") == "img"
    assert root.find(f"{NS}title").text == "Web <VIP> & co"  # type: ignore[union-attr]
    assert "latest 10" in root.find(f"{NS}desc").text  # type: ignore[union-attr,operator]
    polylines = root.findall(f"{NS}polyline")
    assert len(polylines) == 2
    first = [tuple(map(float, p.split(","))) for p in polylines[0].get("points", "").split()]
    # left margin 48, plot width 300-58=242; the top value (10) sits at the plot's top (y=22)
    assert first[0][0] == 48 and first[-1][0] == 48 + 242
    assert first[-1][1] == 22.0


def test_chart_without_data_says_so() -> None:
    svg = line_chart("empty", [Line("a", [])], 0, 3600)
    assert "no data yet" in svg
    ET.fromstring(svg)


def test_single_point_is_a_dot_and_values_are_clamped_to_the_window() -> None:
    svg = line_chart("one", [Line("a", [(50, 3)])], 0, 100)
    assert "<circle" in svg
    svg = line_chart("out", [Line("a", [(-50, 1), (500, 1)])], 0, 100)
    assert "-" not in ET.fromstring(svg).find(f"{NS}polyline").get("points", "")  # type: ignore[union-attr]


def test_human_numbers() -> None:
    assert human(0) == "0"
    assert human(2.5) == "2.5"
    assert human(1500, "B/s") == "1.5kB/s"
    assert human(2_000_000) == "2.0M"
    assert human(3e9) == "3.0G"


def test_every_legend_is_whole_and_inside_the_chart() -> None:
    """Six lines with long labels (three servers, in and out): none is shortened or runs off
    the right edge; the chart grows downwards to hold the rows."""
    labels = [f"McK-Radiology_Srv{i} {d}" for i in range(1, 4) for d in ("in", "out")]
    lines = [Line(label, [(0, 1), (100, 2)]) for label in labels]
    root = ET.fromstring(line_chart("throughput", lines, 0, 100, width=640, height=200))
    legends = [t for t in root.iter(f"{NS}text") if t.get("class") == "legend"]
    assert [t.text for t in legends] == labels
    width, height = int(root.get("width", "0")), int(root.get("height", "0"))
    for t in legends:
        right = float(t.get("x", "0")) + len(t.text or "") * 6.0  # svg.CHAR_W
        assert right <= width, (t.text, right)
        assert 200 < float(t.get("y", "0")) <= height  # under the plot, inside the picture


def test_a_count_axis_has_whole_numbers() -> None:
    root = ET.fromstring(line_chart("open", [Line("a", [(0, 0), (100, 1)])], 0, 100, integer=True))
    ticks = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "axis"][:5]
    assert ticks == ["0", "1", "2", "3", "4"]
    root = ET.fromstring(line_chart("open", [Line("a", [(0, 0), (100, 9)])], 0, 100, integer=True))
    ticks = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "axis"][:5]
    assert ticks == ["0", "5", "10", "15", "20"]
