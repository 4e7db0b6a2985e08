"""The import paths of the flat ``workflows`` modules keep working for one release (re-exports)."""

import importlib
import warnings

import pytest

# old module -> (new module, public names it must still provide)
MOVED = {
    "lth_kernels.workflows.imp_runner": ("lth_kernels.workflows.imp.runner", ["ImpRunner"]),
    "lth_kernels.workflows.imp_branches": ("lth_kernels.workflows.imp.branches", ["BRANCHES", "register_branch"]),
    "lth_kernels.workflows.imp_presets": ("lth_kernels.workflows.imp.presets", []),
    "lth_kernels.workflows.report": ("lth_kernels.workflows.imp.report", ["build_summary", "report", "main"]),
    "lth_kernels.workflows.elastic_runner": ("lth_kernels.workflows.elastic.runner", ["ElasticRunner"]),
    "lth_kernels.workflows.elastic_report": ("lth_kernels.workflows.elastic.report", ["write_report", "format_table"]),
}

# names the single-module workflows exported, now from their packages
PUBLIC = {
    "imp": ["ImpHparams", "RandomPruneHparams", "RandomReinitHparams", "RetrainHparams", "main", "run_imp"],
    "early_bird": ["EarlyBirdHparams", "EarlyBirdOptions", "main", "run", "slimming_loss"],
    "gfs": ["GfsHparams", "GfsOptions", "main", "run"],
    "elastic": ["BASELINES", "ElasticHparams", "main", "run_elastic"],
    "jackpot": ["JackpotHparams", "SearchHparams", "SourceHparams", "main", "resolve_weights", "run"],
    "data_ticket": ["DataTicketHparams", "SelectorHparams", "main", "run_data_ticket"],
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_module_reexports_and_warns(old):
    new, names = MOVED[old]
    target = importlib.import_module(new)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sys

        sys.modules.pop(old, None)
        mod = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    for name in names:
        assert getattr(mod, name) is getattr(target, name)


@pytest.mark.parametrize("workflow", sorted(PUBLIC))
def test_package_keeps_the_module_api(workflow):
    pkg = importlib.import_module(f"lth_kernels.workflows.{workflow}")
    for name in PUBLIC[workflow]:
        assert getattr(pkg, name, None) is not None, f"{workflow}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


def test_cli_reads_the_workflow_registry():
    from lth_kernels import cli
    from lth_kernels.workflows import WORKFLOWS

    for command, wf in WORKFLOWS.items():
        assert cli.COMMANDS[command][0] == wf.package
        assert callable(importlib.import_module(wf.package).main)
