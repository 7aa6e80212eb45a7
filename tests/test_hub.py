"""Export, the two loading routes, packaged weights, push dry-run and the model card (hub.py, model_card.py).

Everything runs offline: the Hub route reads a Hugging Face cache filled in the real layout, in a subprocess whose
HF_HUB_OFFLINE / HF_HOME are set before huggingface_hub is imported.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import timm
import torch
from safetensors import safe_open
from timm.models import register_model

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm.hub.model_card import METRICS, format_pct, render_card, run_from_packaged
from randsac_timm.hub.names import PACKAGED_WEIGHTS_DIR, hub_repo_id
from randsac_timm.hub.publish import HUB_FILES, check_hub_folder, export, load_pretrained_encoder, main, package
from randsac_timm.models import randsac_vit
from randsac_timm.models.randsac_vit import packaged_weight_cfgs, register_packaged_weights
from randsac_timm.train.checkpoint import CheckpointError, load_pretrain_model

ENCODER = 'randsac_vit_micro_patch4_32'
REPO = hub_repo_id(ENCODER, 'fmnist')
TEST_TAG = 'unittest'
RESULTS = dict(top1=84.37, knn_top1=81.25, pixel_linear_top1=78.5, pixel_knn_top1=None,
               protocol=dict(name='linear_probe', mode='fast', feature='mean of last-block tokens'),
               dataset=dict(name='fashion_mnist', train_samples=128, eval_samples=64), wall_time_s=12.5,
               hardware=dict(device='cpu', cpu='x86_64', cpu_threads=2), command='python eval_linear.py --fast')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A real 2-step pretraining run, its results.json, its export folder and the encoder's reference features."""
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    root = tmp_path_factory.mktemp('hub')
    result = train(parse_pretrain_args([
        '--max-steps', '2', '--max-train-samples', '128', '--batch-size', '16', '--workers', '0', '--no-progress',
        '--vis-every', '0', '--output-dir', str(root / 'run')]))
    results_path = root / 'results.json'
    results_path.write_text(json.dumps(dict(RESULTS, encoder=dict(kind='pretrain_checkpoint', path=result.checkpoint,
                                                                   sha256=_sha(result.checkpoint)))))
    folder = root / 'export'
    export(result.checkpoint, str(folder), results=[str(results_path)])
    encoder = load_pretrain_model(result.checkpoint)[0].encoder.eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = encoder(x)
    return dict(root=root, checkpoint=result.checkpoint, results=str(results_path), folder=folder, x=x, ref=ref)


def _sha(path: str) -> str:
    import hashlib
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_export_holds_plain_vit_keys_and_a_stock_config(run):
    folder = run['folder']
    assert sorted(os.listdir(folder)) == sorted(HUB_FILES)
    with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
        keys, meta = set(f.keys()), f.metadata()
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'].startswith('vit_')
    args = config['model_args']
    assert (args['class_token'], args['global_pool'], args['num_classes'], args['in_chans']) == (False, 'avg', 0, 1)
    plain = timm.create_model(config['architecture'], **args)
    assert keys == set(plain.state_dict())  # nothing else: no decoder, no mask_token, no head
    assert not any(k.startswith(('decoder', 'encoder.')) or 'mask_token' in k for k in keys)
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [1, 32, 32] and cfg['mean'] == [0.286] and cfg['license'] == 'apache-2.0'
    assert meta['hub_repo_id'] == REPO and meta['encoder_name'] == ENCODER
    assert check_hub_folder(str(folder))[0] == config['architecture']


def _fill_hf_cache(folder, cache) -> str:
    """Lay out `folder` as a downloaded snapshot of REPO: models--org--name/{refs/main, snapshots/<sha>/...}."""
    sha = 'a' * 40
    repo_dir = cache / f'models--{REPO.replace("/", "--")}'
    snapshot = repo_dir / 'snapshots' / sha
    snapshot.mkdir(parents=True)
    for name in HUB_FILES:
        shutil.copy(folder / name, snapshot / name)
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(sha)
    return str(snapshot)


HUB_SCRIPT = textwrap.dedent('''
    import sys
    import timm, torch
    repo, folder, inputs, out = sys.argv[1:5]
    x = torch.load(inputs)
    feats = {}
    with torch.no_grad():
        feats['hf-hub'] = timm.create_model('hf-hub:' + repo, pretrained=True).eval()(x)
        feats['local-dir'] = timm.create_model('local-dir:' + folder, pretrained=True).eval()(x)
        plugin_free = not any(m.startswith('randsac_timm') for m in sys.modules)
        import randsac_timm  # noqa: F401
        from randsac_timm.hub.publish import load_pretrained_encoder
        feats['registered'] = timm.create_model('randsac_vit_micro_patch4_32', pretrained=True, pretrained_cfg_overlay=
                                                dict(hf_hub_id=repo, num_classes=0)).eval()(x)
        feats['checked'] = load_pretrained_encoder('hf-hub:' + repo).eval()(x)
    torch.save(dict(feats=feats, plugin_free=plugin_free), out)
''')


def test_hub_cache_loads_bit_identical_with_and_without_the_plugin(run, tmp_path):
    hf_home = tmp_path / 'hf'
    _fill_hf_cache(run['folder'], hf_home / 'hub')
    torch.save(run['x'], tmp_path / 'x.pt')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / 'hub'))
    env.pop('HF_TOKEN', None)
    proc = subprocess.run([sys.executable, '-c', HUB_SCRIPT, REPO, str(run['folder']), str(tmp_path / 'x.pt'),
                           str(tmp_path / 'out.pt')], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / 'out.pt')
    assert out['plugin_free'], 'hf-hub: / local-dir: must load in plain timm'
    assert set(out['feats']) == {'hf-hub', 'local-dir', 'registered', 'checked'}
    for route, feats in out['feats'].items():
        assert torch.equal(feats, run['ref']), route


@pytest.fixture
def restore_registry():
    saved = randsac_vit.default_cfgs[ENCODER]
    yield
    randsac_vit.default_cfgs[ENCODER] = saved
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        register_model(randsac_vit.randsac_vit_micro_patch4_32)


def test_packaged_weights_register_a_tag_that_loads_from_its_file_offline(run, tmp_path, monkeypatch,
                                                                          restore_registry):
    # a tag of its own: the package ships real `.fmnist` weights, which must not hide what this test proves
    notes = tmp_path / 'notes.md'
    notes.write_text('Short run.\n')
    weights, meta_path = package(run['checkpoint'], tag=TEST_TAG, results=[run['results']],
                                 out_dir=str(tmp_path / 'weights'), notes=str(notes))
    assert os.path.basename(weights) == f'{ENCODER}.{TEST_TAG}.safetensors'
    meta = json.loads(open(meta_path).read())
    assert meta['notes'] == 'Short run.\n'  # kept, so `hub card` rewrites the card with them
    assert 'Short run.' in render_card(run_from_packaged(meta_path))
    assert meta['hf_hub_id'] == hub_repo_id(ENCODER, TEST_TAG) and meta['sha256'] == _sha(weights)
    assert meta['evaluations'][0]['top1'] == RESULTS['top1']
    assert meta['evaluations'][0]['command'] == RESULTS['command']
    assert f'{ENCODER}.{TEST_TAG}' not in timm.list_pretrained('randsac*')
    assert register_packaged_weights(str(tmp_path / 'weights')) == [f'{ENCODER}.{TEST_TAG}']
    assert f'{ENCODER}.{TEST_TAG}' in timm.list_pretrained('randsac*')

    def no_hub(*args, **kwargs):
        raise AssertionError('packaged weights must not touch the Hub')
    monkeypatch.setattr(timm.models._builder, 'load_state_dict_from_hf', no_hub)
    model = timm.create_model(f'{ENCODER}.{TEST_TAG}', pretrained=True).eval()
    assert model.pretrained_cfg['file'] == os.path.abspath(weights)
    assert model.pretrained_cfg['hf_hub_id'] == hub_repo_id(ENCODER, TEST_TAG)
    assert model.num_classes == 0 and model.pretrained_cfg['input_size'] == (1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(run['x']), run['ref'])
    # the untagged name keeps its weight-less default: same head without pretrained, a clear error with it
    assert timm.create_model(ENCODER).num_classes == 10
    with pytest.raises(RuntimeError, match=rf'{ENCODER}\.{TEST_TAG}'):
        timm.create_model(ENCODER, pretrained=True)


def test_a_tag_trained_at_another_input_size_builds_at_that_size(tmp_path, restore_registry):
    # a 28x28 run of the _patch4_32 encoder, packaged under that encoder's name: `pretrained=True` must give the
    # 7x7-grid model its weights and its cfg describe, not a 32x32 model that rejects the cfg's own input size
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    result = train(parse_pretrain_args([
        '--img-size', '28', '--max-steps', '2', '--max-train-samples', '64', '--batch-size', '16', '--workers', '0',
        '--no-progress', '--vis-every', '0', '--output-dir', str(tmp_path / 'run')]))
    package(result.checkpoint, tag='unittest28', out_dir=str(tmp_path / 'weights'))
    register_packaged_weights(str(tmp_path / 'weights'))
    model = timm.create_model(f'{ENCODER}.unittest28', pretrained=True).eval()
    assert model.patch_embed.img_size == (28, 28) and model.pretrained_cfg['input_size'] == (1, 28, 28)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), load_pretrain_model(result.checkpoint)[0].encoder.eval()(x))
    # a size the caller asks for still wins (the sin-cos table is recomputed for its grid)
    assert timm.create_model(f'{ENCODER}.unittest28', pretrained=True, img_size=32).patch_embed.img_size == (32, 32)


def test_packaged_tag_is_absent_without_its_files(tmp_path):
    assert packaged_weight_cfgs(str(tmp_path / 'missing')) == {}
    (tmp_path / f'{ENCODER}.{TEST_TAG}.safetensors').write_bytes(b'')  # no .json beside it
    with pytest.warns(UserWarning, match='not registered'):
        assert packaged_weight_cfgs(str(tmp_path)) == {}
    assert f'{ENCODER}.{TEST_TAG}' not in timm.list_pretrained('randsac*')


def _card_metric_cells(card: str):
    """Every cell of the metric columns of the card's evaluation table (its first table)."""
    section = card.split('## Evaluation', 1)[1].split('\n## ', 1)[0]
    first_table = section[section.index('|'):].split('\n\n', 1)[0]
    rows = first_table.splitlines()
    header = [c.strip() for c in rows[0].strip('|').split('|')]
    columns = [header.index(title) for _, title in METRICS if title in header]
    return [[c.strip() for c in row.strip('|').split('|')][i] for row in rows[2:] for i in columns]


def test_push_dry_run_writes_only_the_upload_and_card_numbers_come_from_results(run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    token = 'hf_NEVERWRITTENtoken0123456789'
    monkeypatch.setenv('HF_TOKEN', token)
    monkeypatch.setattr(huggingface_hub, 'HfApi', lambda *a, **k: pytest.fail('a dry run must not call the Hub'))
    out = tmp_path / 'upload'
    assert main(['push', run['checkpoint'], '--results', run['results'], '--dry-run', '--out-dir', str(out)]) == 0
    files = sorted(os.listdir(out))
    assert files == sorted(HUB_FILES)
    assert not any(f.endswith(('.bin', '.pth', '.pt', '.pkl')) for f in files)
    assert token not in capsys.readouterr().out
    assert not any(token.encode() in (out / f).read_bytes() for f in files)

    card = (out / 'README.md').read_text()
    held = {format_pct(v) for v in RESULTS.values()} - {None}
    cells = _card_metric_cells(card)
    assert {'84.37', '81.25', '78.50'} <= set(cells)
    assert all(c in held or c == '-' for c in cells), cells  # pixel_knn_top1 is None: shown as '-'
    assert all(p in held for p in re.findall(r'\d+\.\d+(?=\s*%)', card))
    assert '99.99' not in card and 'None' not in card
    for needle in ('arXiv:2203.12054', 'hf-hub:' + REPO, f"'{ENCODER}.fmnist', pretrained=True", 'apache-2.0',
                   'blob:11-5', 'The run stopped after 2 of the', RESULTS['command']):
        assert needle in card, needle
    assert 'transformers' not in card


def test_results_of_another_encoder_are_refused(run, tmp_path):
    other = tmp_path / 'results.json'
    other.write_text(json.dumps(dict(RESULTS, encoder=dict(kind='encoder_safetensors', sha256='0' * 64))))
    with pytest.raises(ValueError, match='neither this checkpoint'):
        export(run['checkpoint'], str(tmp_path / 'out'), results=[str(other)])


def _broken_copy(run, tmp_path, name: str):
    folder = tmp_path / name
    shutil.copytree(run['folder'], folder)
    return folder


def test_corrupt_unknown_or_misshapen_exports_fail_clearly(run, tmp_path):
    corrupt = _broken_copy(run, tmp_path, 'corrupt')
    data = (corrupt / 'model.safetensors').read_bytes()
    (corrupt / 'model.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        load_pretrained_encoder(f'local-dir:{corrupt}')

    unknown = _broken_copy(run, tmp_path, 'unknown')
    config = json.loads((unknown / 'config.json').read_text())
    (unknown / 'config.json').write_text(json.dumps(dict(config, architecture='vit_not_a_model')))
    with pytest.raises(CheckpointError, match="'vit_not_a_model', which timm .* does not know"):
        load_pretrained_encoder(f'local-dir:{unknown}')

    shapes = _broken_copy(run, tmp_path, 'shapes')
    (shapes / 'config.json').write_text(json.dumps(dict(config, model_args=dict(config['model_args'], embed_dim=64))))
    with pytest.raises(CheckpointError, match=r'wrong shapes .*patch_embed\.proj\.weight'):
        load_pretrained_encoder(f'local-dir:{shapes}')

    pickled = _broken_copy(run, tmp_path, 'pickled')
    (pickled / 'pytorch_model.bin').write_bytes(b'')
    with pytest.raises(CheckpointError, match='pickle'):
        check_hub_folder(str(pickled))


def test_pretrained_without_weights_raises_with_tags_and_how_to_publish():
    with pytest.raises(RuntimeError) as err:
        timm.create_model('randsac_vit_base', pretrained=True)
    message = str(err.value)
    for needle in ("'randsac_vit_base'", 'pretrained tags in this install', 'train_pretrain.py --model '
                   'randsac_pretrain_vit_base', 'python -m randsac_timm.hub push', 'randsac-timm/randsac_vit_base.'):
        assert needle in message, needle
    with pytest.raises(RuntimeError, match="'randsac_vit_tiny_patch4_32.nope'"):
        timm.create_model('randsac_vit_tiny_patch4_32.nope', pretrained=True)


def test_card_model_index_round_trips_through_huggingface_hub(run, tmp_path):
    from huggingface_hub import ModelCard

    extra = dict(RESULTS, lbfgs_top1=85.123, pixel_pca_linear_top1=80.0, pixel_lbfgs_top1=83.456,
                 per_block_top1=[41.5, 63.25], encoder=dict(kind='pretrain_checkpoint', sha256=_sha(run['checkpoint'])))
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(extra))
    notes = tmp_path / 'notes.md'
    notes.write_text('Short run: see the targets.\n')
    export(run['checkpoint'], str(tmp_path / 'out'), results=[str(path)], notes=str(notes))
    card = ModelCard.load(str(tmp_path / 'out' / 'README.md'))
    assert '## Limitations and notes\n\nShort run: see the targets.' in card.text
    data = card.data
    assert (data.library_name, data.license, data.model_name) == ('timm', 'apache-2.0', f'{ENCODER}.fmnist')
    assert data.datasets == ['zalando-datasets/fashion_mnist'] and 'randsac' in data.tags
    values = {r.metric_name: r.metric_value for r in data.eval_results}
    assert values == {
        'linear probe (fast) top-1': 84.37, 'kNN top-1': 81.25, 'logistic regression (L-BFGS, converged) top-1': 85.12,
        'raw-pixel linear top-1': 78.5, 'raw-pixel PCA + linear top-1': 80.0,
        'raw-pixel logistic regression (L-BFGS) top-1': 83.46,
        # per_block_top1 is eval_linear.py's converged readout of each block, not its LARS probe
        'logistic regression (L-BFGS, converged) top-1, block 1': 41.5,
        'logistic regression (L-BFGS, converged) top-1, block 2': 63.25}  # pixel_knn_top1 is None: no entry
    for r in data.eval_results:
        assert (r.task_type, r.dataset_type, r.dataset_split, r.metric_type) == (
            'image-classification', 'zalando-datasets/fashion_mnist', 'test', 'accuracy')
        assert r.metric_args['command'] == RESULTS['command']
    assert '| top-1 (%) | 41.50 | 63.25 |' in card.text and 'L-BFGS logistic top-1 (%)' in card.text


def test_the_shipped_card_carries_a_model_index_of_its_packaged_evaluations():
    from huggingface_hub import ModelCard

    name = f'{ENCODER}.fmnist'
    card = ModelCard.load(os.path.join(os.path.dirname(__file__), '..', 'docs', 'model_cards', f'{name}.md'))
    meta = json.load(open(os.path.join(PACKAGED_WEIGHTS_DIR, f'{name}.json')))
    values = [r.metric_value for r in card.data.eval_results]
    assert card.data.model_name == name
    assert all(round(e['top1'], 2) in values for e in meta['evaluations'])


def test_the_card_pairs_each_session_with_its_own_end_record():
    """A run killed at step 2600 and resumed from its step-2500 checkpoint: the first session has no end record,
    the second ran 2500 -> 5682 (the card once gave the first session the second's end)."""
    from randsac_timm.hub.model_card import RunRecord, _hardware_section

    start = dict(event='start', device='cpu', cpu='x86_64')
    log = [dict(start, step=0), dict(event='epoch', step=937, wall_time_s=600.0),
           dict(event='resume', step=2500), dict(start, step=2500), dict(event='end', step=5682, wall_time_s=2040.0)]
    run = RunRecord(name='n.t', repo_id='o/n.t', encoder_name='n', encoder_kwargs={}, architecture='vit', model_args={},
                    pretrained_cfg={}, num_params=1, checkpoint='c.pth', checkpoint_sha256='0', state={}, log=log)
    rows = [line for line in _hardware_section(run).splitlines() if line.startswith('| 1 ') or line.startswith('| 2 ')]
    assert '0 -> ?' in rows[0] and 'interrupted' in rows[0]
    assert '2500 -> 5682' in rows[1] and '34.0 min' in rows[1]


def test_the_card_sets_each_readout_beside_the_raw_pixels_and_carries_the_publishers_notes(tmp_path):
    """A card says, per readout, whether the features beat the pixels they came from (computed from the results,
    nothing typed), and `hub card --notes` adds the publisher's notes under their own heading; a missing notes
    file is one clear error that writes nothing."""
    from randsac_timm.hub.publish import main

    meta = json.loads(open(os.path.join(PACKAGED_WEIGHTS_DIR, 'randsac_vit_micro_patch4_28.fmnist.json')).read())
    evaluation = meta['evaluations'][0]
    meta['evaluations'] = [dict(evaluation, top1=86.0, lbfgs_top1=84.0, pixel_lbfgs_top1=84.09, knn_top1=81.83,
                                pixel_knn_top1=85.69, pixel_linear_top1=84.54, per_block_top1=[83.0, 84.5])]
    packaged = tmp_path / 'weights'
    packaged.mkdir()
    name = 'randsac_vit_micro_patch4_28.fmnist'
    os.symlink(os.path.join(PACKAGED_WEIGHTS_DIR, f'{name}.safetensors'), packaged / f'{name}.safetensors')
    (packaged / 'randsac_vit_micro_patch4_28.fmnist.json').write_text(json.dumps(meta))
    notes = tmp_path / 'notes.md'
    notes.write_text('Trained for one CPU-hour only.\n')
    card = tmp_path / 'card.md'
    main(['card', str(packaged / 'randsac_vit_micro_patch4_28.fmnist.json'), str(card), '--notes', str(notes)])
    text = card.read_text()
    assert '| linear probe | 86.00 | 84.54 | +1.46 |' in text
    assert '| converged (L-BFGS) | 84.00 | 84.09 | -0.09 |' in text
    assert '| kNN | 81.83 | 85.69 | -3.86 |' in text
    assert '| converged (L-BFGS), best block (2) | 84.50 | 84.09 | +0.41 |' in text
    assert 'beat the raw pixels under 1 of 3 readouts' in text
    assert '## Limitations and notes\n\nTrained for one CPU-hour only.' in text
    with pytest.raises(SystemExit, match='--notes .*missing.md: cannot read it'):
        main(['card', str(packaged / 'randsac_vit_micro_patch4_28.fmnist.json'), str(tmp_path / 'out.md'),
              '--notes', str(tmp_path / 'missing.md')])
    assert not (tmp_path / 'out.md').exists()


def test_the_card_names_the_cpu_its_kernels_and_threads_when_the_record_has_them():
    from randsac_timm.hub.model_card import _hardware

    new = dict(device='cpu', cpu='x86_64', cpu_model='AMD EPYC', cpu_capability='AVX2', cpu_threads=1)
    assert _hardware(new).startswith('CPU AMD EPYC (AVX2), 1 thread (cpu')
    assert _hardware(dict(new, cpu_threads=2)).startswith('CPU AMD EPYC (AVX2), 2 threads (')
    assert _hardware(dict(device='cpu', cpu='x86_64')) == 'CPU x86_64 (cpu)'  # a record from before machine_record
