"""A run that says its figures mean little says so in the report too."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pandemonium.modes.steps.report_builder import ReportBuilder
from pandemonium.report.data import ReportData, TaskSection
from pandemonium.report.html import render_html


def test_project_run_warnings_reach_the_task_section(tmp_path):
    proj = tmp_path / "proj"
    older, current = proj / "runs" / "2026-01-01_00-00-00", proj / "runs" / "2026-01-02_00-00-00"
    for run in (older, current):
        run.mkdir(parents=True)
    chance = {"kind": "chance_model", "task": "digits", "message": "model accuracy 0.110 is at chance level"}
    other_task = {"kind": "tiny_patch", "task": "shapes", "message": "patch side 2 px"}
    (older / "warnings.json").write_text(json.dumps([chance, other_task]))
    (current / "warnings.json").write_text(json.dumps([chance]))  # the same finding twice: shown once
    builder = ReportBuilder(SimpleNamespace(proj_path=proj, run_dir=current))
    assert builder.warnings_of("digits") == [chance["message"]]
    assert builder.warnings_of("shapes") == [other_task["message"]]
    assert builder.warnings_of("cifar") == []


def test_section_warnings_are_rendered_visibly():
    page = render_html(ReportData(title="t", sections=[TaskSection(task="digits", warnings=["at chance level"])]))
    assert "<p class='warning'>warning: at chance level</p>" in page
