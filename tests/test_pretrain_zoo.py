"""Full pretraining models in the zoo: export / package / Hub layout, loading by tag and `hf-hub:`, `--init`.

The fixture pretrains the micro wrapper for a few steps on real Fashion-MNIST; everything runs offline (the Hub
route reads a Hugging Face cache filled in the real layout, in a subprocess whose HF_HUB_OFFLINE / HF_HOME are set
before huggingface_hub is imported).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file
from timm.models import register_model

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm.hub.loading import init_pretrain_model, read_pretrain_source, register_packaged_pretrain_weights
from randsac_timm.hub.names import PACKAGED_WEIGHTS_DIR, hub_repo_id
from randsac_timm.hub.publish import HUB_FILES, export, main, package
from randsac_timm.models import randsac_pretrain
from randsac_timm.train.checkpoint import CheckpointError, load_checkpoint, load_pretrain_model

WRAPPER = 'randsac_pretrain_vit_micro_patch4_32'
SHIPPED = f'{WRAPPER}.fmnist'
SHIPPED_FILE = os.path.join(PACKAGED_WEIGHTS_DIR, f'{SHIPPED}.safetensors')
TEST_TAG = 'unittest'


def _sha(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _test_images(fashion_mnist_test, n: int = 64, size: int = 32) -> torch.Tensor:
    """`n` real Fashion-MNIST test images, padded 28 -> `size` and normalised as in pretraining: (n, 1, size, size)."""
    x = fashion_mnist_test.data[:n].float().div(255).unsqueeze(1)
    pad = (size - 28) // 2
    return (torch.nn.functional.pad(x, (pad, pad, pad, pad)) - 0.2860) / 0.3530


def _loss(model, images) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(images, generator=torch.Generator().manual_seed(0)).loss)


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
    """A wrapper pretrained for 24 steps on real Fashion-MNIST, its full export folder and packaged files."""
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    root = tmp_path_factory.mktemp('zoo')
    result = train(parse_pretrain_args([
        '--max-steps', '24', '--max-train-samples', '768', '--batch-size', '32', '--epochs', '1', '--lr', '2e-3',
        '--min-lr', '2e-3', '--warmup-epochs', '0', '--workers', '0', '--no-progress', '--vis-every', '0',
        '--save-every', '0', '--output-dir', str(root / 'run')]))
    folder = root / 'full'
    export(result.checkpoint, str(folder), full=True)
    weights, meta = package(result.checkpoint, tag=TEST_TAG, out_dir=str(root / 'weights'), full=True)
    wrapper, state = load_pretrain_model(result.checkpoint)
    return dict(root=root, checkpoint=result.checkpoint, encoder=result.encoder, folder=folder, weights=weights,
                meta=meta, state=state, reference=wrapper.state_dict())


@pytest.fixture
def restore_registry():
    saved = randsac_pretrain.default_cfgs[WRAPPER]
    yield
    randsac_pretrain.default_cfgs[WRAPPER] = saved
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        register_model(getattr(randsac_pretrain, WRAPPER))


def _assert_same_state(state, reference):
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def test_full_export_holds_every_wrapper_tensor_and_the_args_that_rebuild_it(zoo):
    folder = zoo['folder']
    assert sorted(os.listdir(folder)) == sorted(HUB_FILES)  # safetensors only, no pickle
    weights = load_file(str(folder / 'model.safetensors'))
    _assert_same_state(weights, zoo['reference'])
    assert any(k.startswith('decoder.') for k in weights) and 'decoder.memory.skip_weights' in weights
    with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
        meta = f.metadata()
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == meta['model_name'] == WRAPPER
    args = config['model_args']
    assert json.loads(meta['model_kwargs']) == args
    assert (args['img_size'], args['in_chans'], args['segments'], args['decoder'], args['norm_pix']) == (
        32, 1, 'blob:11-5', 'skip', True)  # the default preset's normalised-pixel target
    assert (args['decoder_embed_dim'], args['decoder_depth'], args['decoder_num_heads']) == (128, 2, 4)
    assert 'attn_impl' not in args  # how attention runs is the loader's choice, not part of the weights
    assert config['pretrained_cfg']['input_size'] == [1, 32, 32]
    assert meta['hub_repo_id'] == hub_repo_id(WRAPPER, 'fmnist')
    card = ModelCard.load(str(folder / 'README.md'))
    assert card.data.library_name == 'timm' and 'zalando-datasets/fashion_mnist' in card.data.datasets
    assert f'--init hf-hub:{hub_repo_id(WRAPPER, "fmnist")}' in card.text
    with pytest.raises(SystemExit, match='holds the encoder alone'):  # one line, not a traceback
        main(['export', zoo['encoder'], str(zoo['root'] / 'nope'), '--full'])


def test_packaged_full_model_loads_by_tag_offline_with_its_decoder(zoo, fashion_mnist_test, monkeypatch,
                                                                    restore_registry):
    meta = json.loads(open(zoo['meta']).read())
    assert os.path.basename(zoo['weights']) == f'{WRAPPER}.{TEST_TAG}.safetensors'
    assert meta['format'] == 'randsac-timm/packaged-pretrain/v1' and meta['sha256'] == _sha(zoo['weights'])
    assert meta['hf_hub_id'] == hub_repo_id(WRAPPER, TEST_TAG)
    assert f'{WRAPPER}.{TEST_TAG}' not in timm.list_pretrained('randsac_pretrain*')
    assert register_packaged_pretrain_weights(str(zoo['root'] / 'weights')) == (f'{WRAPPER}.{TEST_TAG}',)
    assert f'{WRAPPER}.{TEST_TAG}' in timm.list_pretrained('randsac_pretrain*')

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', lambda *a, **k: pytest.fail('packaged: no Hub access'))
    model = timm.create_model(f'{WRAPPER}.{TEST_TAG}', pretrained=True)
    assert model.pretrained_cfg['file'] == os.path.abspath(zoo['weights'])
    _assert_same_state(model.state_dict(), zoo['reference'])
    fresh = timm.create_model(WRAPPER)
    decoder = [k for k in zoo['reference'] if k.startswith('decoder.')]
    assert not any(torch.equal(fresh.state_dict()[k], model.state_dict()[k]) for k in decoder if 'norm' not in k)
    images = _test_images(fashion_mnist_test)
    trained, packaged = load_pretrain_model(zoo['checkpoint'])[0], _loss(model, images)
    assert packaged == _loss(trained, images)
    assert packaged < 0.8 * _loss(fresh, images), 'a few real steps already predict far better than random init'
    # the tag is also an --init source
    weights, info = read_pretrain_source(f'{WRAPPER}.{TEST_TAG}')
    assert info['path'] == os.path.abspath(zoo['weights']) and info['model_name'] == WRAPPER
    # an unknown tag lists what exists and how to make it
    with pytest.raises(RuntimeError, match=rf'{WRAPPER}\.{TEST_TAG}.*hub package .* --full'):
        timm.create_model(f'{WRAPPER}.nope', pretrained=True)


def test_declared_fmnist_tag_loads_as_soon_as_its_file_is_packaged(zoo, tmp_path, restore_registry):
    if not os.path.isfile(SHIPPED_FILE):
        with pytest.raises(RuntimeError, match=r'not packaged yet .*hub package OUT/checkpoint-last\.pth --full'):
            timm.create_model(SHIPPED, pretrained=True)
    package(zoo['checkpoint'], tag='fmnist', out_dir=str(tmp_path), full=True)
    register_packaged_pretrain_weights(str(tmp_path))
    model = timm.create_model(SHIPPED, pretrained=True)
    _assert_same_state(model.state_dict(), zoo['reference'])


HUB_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import timm
    import randsac_timm  # noqa: F401  the full model needs the plugin
    from randsac_timm.hub.loading import read_pretrain_source
    repo, out = sys.argv[1:3]
    model = timm.create_model('hf-hub:' + repo, pretrained=True)
    weights, info = read_pretrain_source('hf-hub:' + repo)
    torch.save(dict(state=model.state_dict(), weights=weights, hf_hub_id=info['hf_hub_id'],
                    pretrained_cfg_hub=model.pretrained_cfg.get('hf_hub_id')), out)
''')


def test_hf_hub_cache_loads_the_full_model_offline(zoo, tmp_path):
    repo = hub_repo_id(WRAPPER, 'fmnist')
    snapshot = tmp_path / 'hf' / 'hub' / f'models--{repo.replace("/", "--")}' / 'snapshots' / ('b' * 40)
    snapshot.mkdir(parents=True)
    for name in HUB_FILES:
        shutil.copy(zoo['folder'] / name, snapshot / name)
    (snapshot.parent.parent / 'refs').mkdir()
    (snapshot.parent.parent / 'refs' / 'main').write_text('b' * 40)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), HF_HUB_CACHE=str(tmp_path / 'hf' / 'hub'))
    env.pop('HF_TOKEN', None)
    proc = subprocess.run([sys.executable, '-c', HUB_SCRIPT, repo, str(tmp_path / 'out.pt')], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / 'out.pt')
    _assert_same_state(out['state'], zoo['reference'])
    _assert_same_state(out['weights'], zoo['reference'])
    assert out['hf_hub_id'] == out['pretrained_cfg_hub'] == repo


def test_init_starts_a_new_run_from_full_weights_with_a_fresh_optimizer(zoo, tmp_path):
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    # lr 1e-30: the one step moves no weight measurably, so the run's weights are what --init loaded
    result = train(parse_pretrain_args([
        '--init', zoo['weights'], '--lr', '1e-30', '--max-steps', '1', '--max-train-samples', '64',
        '--batch-size', '16', '--workers', '0', '--no-progress', '--vis-every', '0',
        '--output-dir', str(tmp_path / 'run')]))
    state = load_checkpoint(result.checkpoint)
    assert set(state['model']) == set(zoo['reference'])
    for key, value in zoo['reference'].items():  # a fresh init differs by ~1e-2
        assert torch.allclose(state['model'][key], value, rtol=0, atol=1e-20), key
    assert state['step'] == 1 and zoo['state']['step'] == 24
    assert {int(s['step']) for s in state['optimizer']['state'].values()} == {1}  # not the 24 steps of the source
    assert state['config']['init'] == zoo['weights']
    start = [json.loads(line) for line in open(result.log) if '"start"' in line][0]
    assert start['step'] == 0 and start['init']['sha256'] == _sha(zoo['weights'])
    assert start['init']['hf_hub_id'] == hub_repo_id(WRAPPER, TEST_TAG)
    # the exported card names the model it started from
    export(result.checkpoint, str(tmp_path / 'export'))
    card = ModelCard.load(str(tmp_path / 'export' / 'README.md'))
    assert card.data.base_model == hub_repo_id(WRAPPER, TEST_TAG)


def test_init_refuses_mismatched_broken_or_encoder_only_sources(zoo, tmp_path):
    plain = timm.create_model(WRAPPER, decoder='plain')
    mismatch = r"decoder 'skip'.* do not fit this run's .*decoder 'plain'.*unexpected \['decoder\.memory"
    with pytest.raises(CheckpointError, match=mismatch):
        init_pretrain_model(plain, zoo['weights'], WRAPPER)
    mae = timm.create_model('mae_pretrain_vit_micro_patch4_32')
    with pytest.raises(CheckpointError, match='is a RandSAC model .* this run trains mae_pretrain_vit_micro'):
        init_pretrain_model(mae, zoo['weights'], 'mae_pretrain_vit_micro_patch4_32')
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(open(zoo['weights'], 'rb').read()[:5000])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        init_pretrain_model(timm.create_model(WRAPPER), str(truncated), WRAPPER)
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        init_pretrain_model(timm.create_model(WRAPPER), str(tmp_path / 'missing.safetensors'), WRAPPER)
    with pytest.raises(CheckpointError, match='encoder alone'):
        init_pretrain_model(timm.create_model(WRAPPER), zoo['encoder'], WRAPPER)
    # a .pth checkpoint is a source too
    init_pretrain_model(model := timm.create_model(WRAPPER), zoo['checkpoint'], WRAPPER)
    _assert_same_state(model.state_dict(), zoo['reference'])


def test_init_and_resume_together_are_refused(zoo, tmp_path):
    from randsac_timm.train.config import parse_pretrain_args
    from randsac_timm.train.engine import train

    with pytest.raises(ValueError, match='pass one of them'):
        train(parse_pretrain_args(['--init', zoo['weights'], '--resume', zoo['checkpoint'], '--max-train-samples', '64',
                                   '--batch-size', '16', '--workers', '0', '--output-dir', str(tmp_path / 'run')]))


# every full RandSAC model shipped in the package (the older 32x32 one, the 28x28 one of the searched recipe, ...)
SHIPPED_FULL = sorted(f[:-len('.safetensors')] for f in os.listdir(PACKAGED_WEIGHTS_DIR)
                      if f.startswith('randsac_pretrain_') and f.endswith('.safetensors'))


def test_the_declared_fmnist_full_model_is_shipped():
    assert SHIPPED in SHIPPED_FULL, (f'{SHIPPED} is not packaged: `python -m randsac_timm.hub package '
                                     f'OUT/checkpoint-last.pth --full --tag fmnist` writes {SHIPPED_FILE}')


@pytest.mark.parametrize('name', SHIPPED_FULL)
def test_shipped_fmnist_full_model_predicts_real_images(fashion_mnist_test, monkeypatch, name):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    shipped_file = os.path.join(PACKAGED_WEIGHTS_DIR, f'{name}.safetensors')
    with open(shipped_file.replace('.safetensors', '.json')) as f:
        assert json.load(f)['sha256'] == _sha(shipped_file)
    model = timm.create_model(name, pretrained=True)
    packaged = load_file(shipped_file)
    _assert_same_state(model.state_dict(), packaged)
    kwargs = json.loads(safe_open(shipped_file, 'pt').metadata()['model_kwargs'])
    fresh = timm.create_model(name.partition('.')[0], **kwargs)
    decoder = [k for k in packaged if k.startswith('decoder.') and 'norm' not in k]
    assert decoder and not any(torch.equal(fresh.state_dict()[k], packaged[k]) for k in decoder)
    images = _test_images(fashion_mnist_test, 256, size=fresh.encoder.patch_embed.img_size[0])
    assert _loss(model, images) < 0.5 * _loss(fresh, images)
