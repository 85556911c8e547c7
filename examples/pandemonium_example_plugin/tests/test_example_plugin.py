"""How a plugin tests itself with pandemonium's pytest fixtures (registered automatically, nothing to import).

Run: python -m pytest examples/pandemonium_example_plugin/tests
"""

import json


def test_count_mode_on_a_fake_task(fake_task, run_mode):
    result = run_mode("example_count", f"task_list=[{fake_task.name}]", "mode.scale=2")
    assert result.returncode == 0, result.output
    structs = json.loads((result.run_dir / "structs.json").read_text())
    counts = json.loads(open(structs[fake_task.name]["example_counts"]["__path__"]).read())
    assert counts["samples"] == fake_task.num_samples


def test_stripes_task_is_creatable(pandemonium_roots, run_mode):
    result = run_mode("create", "task_list=[example_stripes]")
    assert result.returncode == 0, result.output
    assert (pandemonium_roots.data_dir / "tasks" / "example_stripes" / "task.json").is_file()
