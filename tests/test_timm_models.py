"""The RandSAC encoders against timm's own model test suite (`tests/test_models.py` of the installed timm's sdist).

The slow test fetches the sdist of the installed timm version (cached under `$RANDSAC_TIMM_CACHE`, default
`~/.cache/randsac-timm`), runs its `tests/test_models.py` restricted to our encoders in a subprocess, plus the three
ViT-only cases timm's filters do not select for them (`tests/timm_vit_cases.py`), and checks that every encoder and
tag actually ran. It skips, saying why, only when the sdist cannot be obtained.
"""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Set

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2

import randsac_timm  # noqa: F401  (registers the encoders)

CACHE = Path(os.environ.get('RANDSAC_TIMM_CACHE', Path.home() / '.cache' / 'randsac-timm'))
ENCODERS = timm.list_models('randsac_vit*')
ENCODERS_AND_TAGS = timm.list_models('randsac_vit*', include_tags=True)
# timm runs these on every ViT it has; each must run (pass, or be skipped by timm itself) for each encoder
REQUIRED = {
    'test_model_forward', 'test_model_backward', 'test_model_forward_torchscript', 'test_model_forward_fx',
    'test_model_backward_fx', 'test_model_default_cfgs_non_std', 'test_model_forward_intermediates',
    'test_model_forward_intermediates_features',
}
REQUIRED_TAGGED = {'test_model_default_cfgs_non_std'}
# timm loads every tag with weights, except on GitHub's runners (its own condition)
REQUIRED_WEIGHTS = set() if 'GITHUB_ACTIONS' in os.environ else {'test_model_load_pretrained',
                                                                 'test_model_features_pretrained'}
CASE_ID = re.compile(r'^(test_\w+)\[(?:\d+-)?(randsac_vit[\w.]*)\]$')


def _timm_tests_dir() -> Path:
    """timm's `tests/` (and its pyproject.toml, for the pytest config) of the installed version, from the sdist."""
    version = timm.__version__
    dest = CACHE / f'timm-{version}-tests'
    if (dest / 'tests' / 'test_models.py').is_file():
        return dest
    sdist = CACHE / f'timm-{version}.tar.gz'
    if not sdist.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
               '--disable-pip-version-check', '--timeout', '30', f'timm=={version}', '-d', str(CACHE)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(f'timm {version} sdist not obtained: `{" ".join(cmd[2:])}` ran past 300 s')
        if proc.returncode or not sdist.is_file():
            last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            pytest.skip(f'timm {version} sdist not obtained (`{" ".join(cmd[2:])}`: {last}); put it at {sdist} '
                        f'to run timm\'s model tests offline')
    prefix = f'timm-{version}/'
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix + 'tests/') or m.name == prefix + 'pyproject.toml']
        # only tests/: the sdist's own timm/ package must not shadow the installed one
        extra = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
        tar.extractall(tmp, members=members, **extra)
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete copy (no test_models.py) from an interrupted run
        shutil.move(os.path.join(tmp, prefix), dest)
    return dest


def _cases(junit_xml: Path) -> Dict[str, Dict[str, Set[str]]]:
    """{outcome: {model name: test functions}} of the randsac cases in a junit report."""
    out: Dict[str, Dict[str, Set[str]]] = {'passed': {}, 'skipped': {}, 'failed': {}}
    for case in ET.parse(junit_xml).getroot().iter('testcase'):
        match = CASE_ID.match(case.get('name', ''))
        if not match:
            continue
        outcome = 'failed' if case.find('failure') is not None or case.find('error') is not None else (
            'skipped' if case.find('skipped') is not None else 'passed')
        out[outcome].setdefault(match.group(2), set()).add(match.group(1))
    return out


@pytest.mark.slow
def test_encoders_pass_timms_model_test_suite(tmp_path):
    suite = _timm_tests_dir()
    shutil.copyfile(Path(__file__).with_name('timm_vit_cases.py'), suite / 'tests' / 'test_randsac_vit_cases.py')
    # timm runs test_model_default_cfgs_non_std instead of this case on its ViTs (timm_vit_cases.py says why)
    deselect = [arg for name in ENCODERS_AND_TAGS
                for arg in ('--deselect', f'tests/test_models.py::test_model_default_cfgs[1-{name}]')]
    junit = tmp_path / 'timm_models.xml'
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'randsac_timm', '-p', 'no:cacheprovider',
           '-W', 'ignore::pytest.PytestUnknownMarkWarning',  # timm's timeout marks, without pytest-timeout
           'tests/test_models.py', 'tests/test_randsac_vit_cases.py', '-k', 'randsac_vit', *deselect,
           f'--junitxml={junit}']
    proc = subprocess.run(cmd, cwd=suite, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f'timm {timm.__version__} model tests failed in {suite}:\n{proc.stdout[-6000:]}'
    cases = _cases(junit)
    assert not cases['failed'], cases['failed']
    for name in ENCODERS_AND_TAGS:
        assert cases['passed'].get(name), f'no timm model test passed for {name}: the -k filter selects nothing'
        ran = cases['passed'].get(name, set()) | cases['skipped'].get(name, set())
        required = (REQUIRED if name in ENCODERS else REQUIRED_TAGGED) | (
            REQUIRED_WEIGHTS if name in timm.list_pretrained('randsac_vit*') else set())
        missing = required - ran
        assert not missing, f'{name}: timm cases not run: {sorted(missing)}'


@pytest.mark.parametrize('model_name', ENCODERS_AND_TAGS)
def test_no_weight_decay_names_only_parameters(model_name):
    # timm's contract (test_model_default_cfgs): an optimizer factory looks each name up among the parameters
    with torch.device('meta'):
        model = timm.create_model(model_name)
    params = {name for name, _ in model.named_parameters()}
    assert model.no_weight_decay() <= params
    assert 'pos_embed' not in params  # a fixed buffer: no name to exempt, nothing that could be decayed
    groups = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05).param_groups
    decayed = {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}
    # the encoder's decay is unchanged: every >= 2-D weight decays, every bias and norm parameter does not
    assert decayed == {id(p) for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith('.bias')}
