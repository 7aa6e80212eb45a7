"""The Hub model card (`README.md`) of an exported encoder, written only from the run's own records.

Every number on the card comes from the pretraining checkpoint, its `log.jsonl`, or a `results.json` of
`eval_linear.py` / `eval_finetune.py` (percentages are those values rounded to two decimals); a metric no
results file holds is not shown. `hub.py` gathers the records into a `RunRecord`; `render_card` formats them.

The front matter is built with `huggingface_hub`'s own card classes (`ModelCardData`, `EvalResult`): library `timm`,
tags, license, the Hub ids of the data sets, `base_model` when the run started from a published model (`--init`),
and a `model-index` with one entry per measured number (split and command included), which the Hub shows as
evaluation results and which `ModelCard.load(...).data.eval_results` reads back.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ['RunRecord', 'CITATION', 'METRICS', 'HUB_DATASETS', 'render_card', 'card_data', 'eval_results',
           'format_pct', 'run_from_packaged']

CITATION = '''@article{hua2022randsac,
  title   = {Self-supervision through Random Segments with Autoregressive Coding (RandSAC)},
  author  = {Hua, Tianyu and Tian, Yonglong and Ren, Sucheng and Zhao, Hang and Sigal, Leonid},
  journal = {arXiv preprint arXiv:2203.12054},
  year    = {2022}
}'''

# results.json top-level key -> card column; a key a results file does not hold is skipped
METRICS: Tuple[Tuple[str, str], ...] = (
    ('top1', 'top-1 (%)'),
    ('top1_ema', 'EMA top-1 (%)'),
    ('knn_top1', 'kNN top-1 (%)'),
    ('lbfgs_top1', 'L-BFGS logistic top-1 (%)'),
    ('pixel_linear_top1', 'raw-pixel linear top-1 (%)'),
    ('pixel_knn_top1', 'raw-pixel kNN top-1 (%)'),
    ('pixel_pca_linear_top1', 'raw-pixel PCA linear top-1 (%)'),
    ('pixel_lbfgs_top1', 'raw-pixel L-BFGS top-1 (%)'),
)
# the model-index names of the same numbers ('top1' is named after the protocol)
METRIC_NAMES = {
    'top1_ema': 'fine-tuning top-1 (EMA weights)', 'knn_top1': 'kNN top-1',
    'lbfgs_top1': 'logistic regression (L-BFGS, converged) top-1', 'pixel_linear_top1': 'raw-pixel linear top-1',
    'pixel_knn_top1': 'raw-pixel kNN top-1', 'pixel_pca_linear_top1': 'raw-pixel PCA + linear top-1',
    'pixel_lbfgs_top1': 'raw-pixel logistic regression (L-BFGS) top-1',
}
PER_BLOCK_KEY = 'per_block_top1'  # eval_linear.py's converged (L-BFGS) readout of each block, not its LARS probe
# our data set names -> (Hub dataset id, pretty name, Hub split of our 'val' split); others get no dataset link
HUB_DATASETS = {
    'fashion_mnist': ('zalando-datasets/fashion_mnist', 'Fashion-MNIST', 'test'),
    'cifar10': ('uoft-cs/cifar10', 'CIFAR-10', 'test'),
    'cifar100': ('uoft-cs/cifar100', 'CIFAR-100', 'test'),
}

# pretraining hyper-parameters shown in the recipe table, in this order (PretrainConfig field names)
RECIPE_KEYS = (
    'model', 'segments', 'decoder', 'skip_connections', 'norm_pix_loss', 'loss_first_segment', 'mask_ratio',
    'dataset', 'img_size', 'max_train_samples', 'epochs', 'max_steps', 'batch_size', 'accum_iter', 'blr', 'lr',
    'min_lr', 'warmup_epochs', 'weight_decay', 'betas', 'clip_grad', 'drop_path', 'amp', 'seed',
)

MAE_ONLY_KEYS = ('mask_ratio',)
RANDSAC_ONLY_KEYS = ('segments', 'decoder', 'skip_connections', 'loss_first_segment')


@dataclass
class RunRecord:
    """What the card may state: the checkpoint's own fields, its log records and the evaluation results.

    Attributes:
        name: registered name with tag, '<encoder>.<tag>'.
        repo_id: Hub repo, '<org>/<encoder>.<tag>'.
        encoder_name: registered RandSAC encoder.
        encoder_kwargs: factory kwargs of the encoder (img_size, in_chans).
        architecture: stock timm `vit_*` name written to config.json.
        model_args: config.json `model_args` (rebuild the encoder in plain timm).
        pretrained_cfg: config.json `pretrained_cfg` (input size, mean, std, license ...).
        num_params: parameters in the exported weights.
        checkpoint: file name of the pretraining checkpoint.
        checkpoint_sha256: its SHA-256.
        state: checkpoint fields other than weights and optimizer (config, step, epoch, wall_time_s, world_size).
        log: `log.jsonl` records ('start', 'epoch', 'end', 'resume'), [] when no log was found.
        results: (file name, results dict) of each evaluation.
        kind: 'encoder' (the encoder alone) or 'pretrain' (the full pretraining model: encoder, decoder, skips).
        notes: the publisher's own Markdown (`--notes FILE`: limitations, what is left), '' for none; shown as it
            is under "Limitations and notes", apart from the measured sections.
    """

    name: str
    repo_id: str
    encoder_name: str
    encoder_kwargs: Dict[str, Any]
    architecture: str
    model_args: Dict[str, Any]
    pretrained_cfg: Dict[str, Any]
    num_params: int
    checkpoint: str
    checkpoint_sha256: str
    state: Dict[str, Any]
    log: List[Dict[str, Any]] = field(default_factory=list)
    results: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    kind: str = 'encoder'
    notes: str = ''

    @property
    def config(self) -> Dict[str, Any]:
        return self.state.get('config') or {}

    @property
    def base_model(self) -> Optional[str]:
        """The Hub repo this run started from (`--init`), as its log's first start record names it."""
        starts = self.events('start')
        init = starts[0].get('init') if starts else None
        return init.get('hf_hub_id') if isinstance(init, dict) else None

    def events(self, name: str) -> List[Dict[str, Any]]:
        return [r for r in self.log if r.get('event') == name]


def format_pct(value: Any) -> Optional[str]:
    """A results percentage as shown on the card (two decimals), None when not measured."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
        return None
    return f'{value:.2f}'


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return 'not recorded'
    if seconds < 120:
        return f'{seconds:.1f} s'
    return f'{seconds / 3600:.2f} h' if seconds >= 7200 else f'{seconds / 60:.1f} min'


def _hardware(record: Dict[str, Any]) -> str:
    """'1 x NVIDIA H100 (cuda:0)' / 'CPU AMD EPYC (AVX2), 1 thread (cpu)' from a log 'start' record or a results
    'hardware' dict (records older than `machine_record` name the CPU by its architecture only)."""
    device = record.get('device', '?')
    gpu, cpu = record.get('gpu'), record.get('cpu_model') or record.get('cpu') or '?'
    procs = record.get('world_size')
    if gpu:
        text = f'{procs} x {gpu}' if procs else str(gpu)
    else:
        text = f'CPU {cpu}' + (f' ({record["cpu_capability"]})' if record.get('cpu_capability') else '')
        threads = record.get('cpu_threads')
        if threads:
            text += f', {threads} thread{"s" if threads != 1 else ""}'
    versions = ', '.join(f'{lib} {record[lib]}' for lib in ('torch', 'timm') if record.get(lib))
    return f'{text} ({device}{"; " + versions if versions else ""})'


def hub_dataset(name: Optional[str]) -> Tuple[Optional[str], str, str]:
    """(Hub dataset id or None, pretty name, Hub split of our 'val' split) of a data set name."""
    if not name:
        return None, 'unrecorded data set', 'validation'
    if str(name).startswith('hfds/'):
        return name[5:], name[5:], 'validation'
    from ..train.data import canonical_dataset_name

    try:
        key = canonical_dataset_name(str(name))
    except ValueError:
        key = str(name)
    return HUB_DATASETS.get(key, (None, str(name), 'validation'))


def _dataset_name(results: Dict[str, Any]) -> Optional[str]:
    data = results.get('dataset')
    return data.get('name') if isinstance(data, dict) else data


def _protocol_label(results: Dict[str, Any]) -> str:
    """'linear probe (fast)', 'fine-tuning (2 epochs)', ...: what 'top1' of this results file measured."""
    protocol = results.get('protocol')
    name = str(protocol.get('name', 'evaluation')) if isinstance(protocol, dict) else str(protocol or 'evaluation')
    name = {'linear_probe': 'linear probe', 'finetune': 'fine-tuning'}.get(name, name.replace('_', ' '))
    return _protocol(results, name)


def _per_block(results: Dict[str, Any]) -> List[Tuple[str, str]]:
    """[(block label, percentage)] of `per_block_top1` (a list of numbers, or of {block, top1}), [] when absent."""
    values = results.get(PER_BLOCK_KEY)
    if not isinstance(values, list):
        return []
    out = []
    for i, v in enumerate(values):
        block, value = (v.get('block', i + 1), v.get('top1')) if isinstance(v, dict) else (i + 1, v)
        if format_pct(value) is not None:
            out.append((str(block), format_pct(value)))
    return out


def _protocol_name(results: Dict[str, Any]) -> Optional[str]:
    """'linear_probe', 'finetune', ...: the protocol a results file records (a dict with `name`, or a string)."""
    protocol = results.get('protocol')
    return protocol.get('name') if isinstance(protocol, dict) else protocol


def command_of(results: Dict[str, Any]) -> Tuple[Optional[str], bool]:
    """(the command that produced `results`, whether it was rebuilt): its recorded `command`, else one rebuilt
    from its `hyperparameters` (every option that differs from the script's default), else None."""
    if results.get('command'):
        return str(results['command']), False
    hyper = results.get('hyperparameters')
    name = _protocol_name(results)
    if not isinstance(hyper, dict) or name not in ('linear_probe', 'finetune'):
        return None, False
    import dataclasses

    from ..eval.config import FinetuneConfig, LinearProbeConfig

    script, cls = ('eval_linear.py', LinearProbeConfig) if name == 'linear_probe' else ('eval_finetune.py',
                                                                                       FinetuneConfig)
    parts = [f'python {script}']
    for f in dataclasses.fields(cls):
        if f.name not in hyper or f.default is dataclasses.MISSING:
            continue
        value, default = hyper[f.name], f.default
        if (list(value) if isinstance(value, (list, tuple)) else value) == (
                list(default) if isinstance(default, tuple) else default):
            continue
        flag = '--' + f.name.replace('_', '-')
        if isinstance(value, bool):
            parts.append(flag if value else f'--no-{f.name.replace("_", "-")}')
        elif isinstance(value, (list, tuple)):
            parts.append(f'{flag} {" ".join(str(v) for v in value)}')
        else:
            parts.append(f'{flag} {"none" if value is None else value}')
    return ' '.join(parts), True


def eval_results(run: RunRecord) -> List[EvalResult]:
    """One `EvalResult` per number a results file holds (rounded as on the card), with its split and command."""
    out = []
    for fname, r in run.results:
        dataset_id, pretty, split = hub_dataset(_dataset_name(r))
        command, rebuilt = command_of(r)
        args = dict(record=fname)
        if command:
            args.update(command=command, **({'command_rebuilt_from': 'hyperparameters'} if rebuilt else {}))
        common = dict(task_type='image-classification', task_name='Image Classification',
                      dataset_type=dataset_id or pretty, dataset_name=pretty, dataset_split=split,
                      metric_type='accuracy', metric_args=args)
        label = _protocol_label(r)
        for key, _ in METRICS:
            value = format_pct(r.get(key))
            if value is not None:
                name = f'{label} top-1' if key == 'top1' else METRIC_NAMES[key]
                out.append(EvalResult(metric_name=name, metric_value=float(value), **common))
        for block, value in _per_block(r):
            out.append(EvalResult(metric_name=f'{METRIC_NAMES["lbfgs_top1"]}, block {block}', metric_value=float(value),
                                  **common))
    return out


def card_data(run: RunRecord) -> ModelCardData:
    """The card's metadata as `huggingface_hub` writes and validates it."""
    datasets = [hub_dataset(run.config.get('dataset'))[0]]
    datasets += [hub_dataset(_dataset_name(r))[0] for _, r in run.results]
    datasets = [d for i, d in enumerate(datasets) if d and d not in datasets[:i]]
    results = eval_results(run)
    tags = ['timm', 'randsac', 'self-supervised', 'vision-transformer']
    tags += ['image-feature-extraction'] if run.kind == 'encoder' else ['masked-image-modeling', 'pretraining']
    return ModelCardData(
        library_name='timm', license=run.pretrained_cfg.get('license', 'apache-2.0'), tags=tags,
        pipeline_tag='image-feature-extraction' if run.kind == 'encoder' else None,
        datasets=datasets or None, base_model=run.base_model, model_name=run.name if results else None,
        eval_results=results or None)


def _architecture(run: RunRecord) -> str:
    a = run.model_args
    rows = [
        ('encoder (randsac-timm)', f'`{run.encoder_name}`'),
        ('plain timm architecture', f'`{run.architecture}` with the `model_args` of config.json'),
        ('depth x width, heads', f'{a.get("depth")} x {a.get("embed_dim")}, {a.get("num_heads")}'),
        ('patch size', _value(a.get('patch_size'))),
        ('input (channels, height, width)', _value(run.pretrained_cfg.get('input_size'))),
        ('tokens', 'no class token; fixed 2-D sin-cos position embedding; average pooling'),
        ('parameters', f'{run.num_params:,}'),
        ('head', 'none (num_classes=0): the model returns pooled features'),
    ]
    return _table(('', ''), rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _recipe(run: RunRecord) -> str:
    cfg = run.config
    mae = str(cfg.get('model', '')).startswith('mae_')
    skip = MAE_ONLY_KEYS if not mae else RANDSAC_ONLY_KEYS  # options the run's objective ignores
    rows = [('objective', 'MAE (baseline objective)' if mae else 'RandSAC')]
    rows += [(key, f'`{_value(cfg[key])}`') for key in RECIPE_KEYS if key in cfg and key not in skip]
    starts = run.events('start')
    if starts:
        first = starts[0]
        rows += [(label, f'`{_value(first[key])}`') for key, label in (
            ('effective_batch', 'effective batch'), ('lr', 'lr (resolved)'), ('updates_per_epoch', 'steps per epoch'),
            ('total_updates', 'planned optimizer steps')) if key in first]
    rows += [('optimizer steps done', f'`{run.state.get("step")}`'),
             ('epochs completed', f'`{run.state.get("epoch")}`')]
    text = _table(('setting', 'value'), rows)
    total = starts[0].get('total_updates') if starts else None
    step = run.state.get('step')
    if isinstance(total, int) and isinstance(step, int) and step < total:
        text += (f'\n\nThe run stopped after {step} of the {total} planned optimizer steps (the learning-rate schedule '
                 f'was not completed), so these weights are not the recipe\'s end point.')
    return text


def _hardware_section(run: RunRecord) -> str:
    starts, resumes = run.events('start'), run.events('resume')
    if not starts:
        return (f'No `log.jsonl` was found beside the checkpoint, so the hardware is not recorded. The checkpoint '
                f'records a wall-clock of {_duration(run.state.get("wall_time_s"))} for its last session.')
    # a session is a start record and the end record before the next start (none: it was killed), in log order
    sessions: List[List[Dict[str, Any]]] = []
    for record in run.log:
        if record.get('event') == 'start':
            sessions.append([record])
        elif record.get('event') == 'end' and sessions and len(sessions[-1]) == 1:
            sessions[-1].append(record)
    rows = []
    for i, (start, *closed) in enumerate(sessions):
        end = closed[0] if closed else None
        rows.append((str(i + 1), _hardware(start), f'{start.get("step")} -> {end.get("step") if end else "?"}',
                     _duration(end.get('wall_time_s')) if end else 'no end record (interrupted)'))
    text = _table(('session', 'hardware', 'steps', 'wall-clock'), rows)
    if resumes:
        text += f'\n\nThe run was resumed from a checkpoint {len(resumes)} time(s); each session is listed.'
    return text


def _protocol(results: Dict[str, Any], name: Optional[str] = None) -> str:
    protocol = results.get('protocol')
    hyper = results.get('hyperparameters') if isinstance(results.get('hyperparameters'), dict) else {}
    # the schedule length belongs next to the number: a 2-epoch fine-tune is not the paper's 100
    details = [str(protocol['mode'])] if isinstance(protocol, dict) and protocol.get('mode') else []
    details += [f'{hyper["epochs"]:g} epochs'] if hyper.get('epochs') else []
    if name is None and isinstance(protocol, dict):
        name = str(protocol.get('name', 'evaluation')).replace('_', ' ')
    elif name is None:
        name = str(protocol or 'evaluation')
    return f'{name} ({", ".join(details)})' if details else name


def _dataset(results: Dict[str, Any]) -> str:
    data = results.get('dataset')
    if isinstance(data, dict):
        name = data.get('name', '?')
        sizes = ', '.join(f'{k.split("_")[0]} {data[k]}' for k in ('train_samples', 'eval_samples') if data.get(k))
        return f'{name} ({sizes})' if sizes else str(name)
    return str(data or '?')


def _results_section(run: RunRecord) -> str:
    if not run.results:
        return ('No evaluation results were attached to this export (`--results`), so the card reports no accuracy. '
                'Evaluate with `eval_linear.py` / `eval_finetune.py` and export again with `--results`.')
    columns = [(key, title) for key, title in METRICS if any(format_pct(r.get(key)) for _, r in run.results)]
    rows = []
    for fname, r in run.results:
        cells = [_protocol(r), _dataset(r)] + [format_pct(r.get(key)) or '-' for key, _ in columns]
        hardware = r.get('hardware') if isinstance(r.get('hardware'), dict) else {}
        cells += [_hardware(hardware) if hardware else '-', _duration(r.get('wall_time_s')), f'`{fname}`']
        rows.append(cells)
    header = ['protocol', 'data set (train / eval images)'] + [t for _, t in columns] + ['hardware', 'wall-clock',
                                                                                          'record']
    text = _table(header, rows)
    notes = []
    for fname, r in run.results:
        protocol = r.get('protocol')
        if isinstance(protocol, dict) and protocol.get('feature'):
            head = f'; head = {protocol["head"]}' if protocol.get('head') else ''
            notes.append(f'- `{fname}`: features = {protocol["feature"]}{head}.')
        command, rebuilt = command_of(r)
        if command:
            how = ' (rebuilt from the record\'s hyperparameters)' if rebuilt else ''
            notes.append(f'- `{fname}` command{how}: `{command}`')
    if notes:
        text += '\n\n' + '\n'.join(notes)
    blocks = [(fname, _per_block(r)) for fname, r in run.results if _per_block(r)]
    for fname, values in blocks:
        text += (f'\n\nConverged readout (L-BFGS logistic regression) of the mean of each block\'s tokens '
                 f'(`{fname}`; the last block is the "L-BFGS logistic" column above):\n\n'
                 + _table(['block'] + [b for b, _ in values], [['top-1 (%)'] + [v for _, v in values]]))
    text += ('\n\n"top-1" is the linear probe, or fine-tuning for a fine-tuning record; "L-BFGS logistic" is a '
             'converged logistic-regression readout of the same features; the raw-pixel columns are the same heads / '
             'kNN on flattened pixels (or their PCA), the baseline any encoder should beat. The same numbers are in '
             'the card\'s `model-index` metadata, with the split and the command.')
    return text


# (readout, the encoder's key, the raw pixels' key on the same split and head)
PIXEL_PAIRS = (('linear probe', 'top1', 'pixel_linear_top1'), ('converged (L-BFGS)', 'lbfgs_top1', 'pixel_lbfgs_top1'),
               ('kNN', 'knn_top1', 'pixel_knn_top1'))


def _against_pixels(run: RunRecord) -> str:
    """Each linear-probe record's readouts beside the raw pixels' under the same readout and split, with the
    difference: whether the features are worth more than the pixels they came from. '' when no record has both."""
    text = ''
    for fname, r in run.results:
        if _protocol_name(r) != 'linear_probe':
            continue  # a fine-tuned top-1 is not comparable with a linear readout of pixels
        rows = []
        for label, key, pixel_key in PIXEL_PAIRS:
            ours, pixels = format_pct(r.get(key)), format_pct(r.get(pixel_key))
            if ours and pixels:
                rows.append([label, ours, pixels, f'{float(ours) - float(pixels):+.2f}'])
        if not rows:
            continue
        verdict = (f'The last block\'s features beat the raw pixels under {sum(float(row[3]) > 0 for row in rows)} '
                   f'of {len(rows)} readouts.')
        blocks, pixels = _per_block(r), format_pct(r.get('pixel_lbfgs_top1'))
        if blocks and pixels:
            block, best = max(blocks, key=lambda b: float(b[1]))
            rows.append([f'converged (L-BFGS), best block ({block})', best, pixels,
                         f'{float(best) - float(pixels):+.2f}'])
        text += (f'\n\nAgainst the raw pixels (`{fname}`, same split, same readout):\n\n'
                 + _table(['readout', 'these features (%)', 'raw pixels (%)', 'difference (points)'], rows)
                 + '\n\n' + verdict)
    return text


def _overlay(run: RunRecord) -> str:
    cfg = run.pretrained_cfg
    parts = [f"hf_hub_id='{run.repo_id}'", 'num_classes=0']
    parts += [f'{k}={tuple(cfg[k])!r}' for k in ('input_size', 'mean', 'std') if cfg.get(k) is not None]
    return 'dict(\n        ' + ',\n        '.join(parts) + ')'


def _usage(run: RunRecord) -> str:
    c, h, w = run.pretrained_cfg.get('input_size', (3, 224, 224))
    kwargs = ''.join(f', {k}={v!r}' for k, v in run.encoder_kwargs.items())
    return f'''With the plugin (`pip install randsac-timm`), by registered name:

```python
import timm
import torch
import randsac_timm  # noqa: F401  registers randsac_* and their weight tags

model = timm.create_model('{run.name}', pretrained=True).eval()  # a release that registers this tag
# any randsac-timm release: point the architecture at this repo
model = timm.create_model('{run.encoder_name}', pretrained=True{kwargs},
                          pretrained_cfg_overlay={_overlay(run)}).eval()
features = model(torch.randn(1, {c}, {h}, {w}))  # (1, {run.model_args.get("embed_dim")}) pooled features
```

Plain timm, without the plugin (config.json names the stock `{run.architecture}` with `model_args`):

```python
import timm
import torch

model = timm.create_model('hf-hub:{run.repo_id}', pretrained=True).eval()
data_config = timm.data.resolve_data_config({{}}, model=model)  # input size, mean, std of the pretraining data
features = model(torch.randn(1, {c}, {h}, {w}))
tokens = model.forward_features(torch.randn(1, {c}, {h}, {w}))  # (1, tokens, width), no class token
```

Both routes load the same tensors and give bit-identical features. `pretrained=True` is required: without it timm
builds the architecture with random weights. `randsac_timm.train.data.build_eval_transform` reproduces the evaluation
preprocessing of the results above.'''


def _full_model_details(run: RunRecord) -> str:
    a = run.model_args
    rows = [
        ('pretraining wrapper (randsac-timm)', f'`{run.architecture}`'),
        ('encoder', f'`{run.encoder_name}` (published alone as `{run.encoder_name}.{run.name.split(".", 1)[1]}`)'),
        ('rebuild arguments', f'`{json.dumps(a, sort_keys=True)}` (config.json `model_args`)'),
        ('parameters and buffers saved', f'{run.num_params:,}'),
    ]
    return _table(('', ''), rows)


def _full_usage(run: RunRecord) -> str:
    c, h, w = run.pretrained_cfg.get('input_size', (3, 224, 224))
    return f'''The full model needs the plugin (`pip install randsac-timm`); plain timm does not know the wrapper.

```python
import timm
import torch
import randsac_timm  # noqa: F401  registers the pretraining wrappers and their weight tags

model = timm.create_model('{run.name}', pretrained=True)  # a release that packages or registers this tag
model = timm.create_model('hf-hub:{run.repo_id}', pretrained=True)  # any release, from the Hub
out = model(torch.randn(4, {c}, {h}, {w}))  # out.loss, out.pred (B, tokens, patch pixels), out.rank, out.loss_mask
```

Continue pretraining on your own data (new optimizer and schedule, step 0; every wrapper weight is loaded
strictly, so the run must use the same architecture, decoder and input size):

```bash
python train_pretrain.py --init hf-hub:{run.repo_id} --dataset imagefolder --data-dir /my/images
```

Reconstruction pictures: `randsac_timm.visualize.save_reconstruction(path, model, images, mean, std)` with the
model's `pretrained_cfg` mean and std.'''


def render_card(run: RunRecord) -> str:
    """The model card of `run`: `huggingface_hub` metadata (front matter with `model-index`) and Markdown."""
    cfg = run.config
    dataset = cfg.get('dataset', 'an unrecorded data set')
    source = (f'exported by randsac-timm from `{run.checkpoint}` (SHA-256 `{run.checkpoint_sha256}`)')
    init = (f' The run started from [`{run.base_model}`](https://huggingface.co/{run.base_model}) (`--init`).'
            if run.base_model else '')
    if run.kind == 'pretrain':
        intro = (f'The full RandSAC pretraining model (Random Segments with Autoregressive Coding, '
                 f'[arXiv:2203.12054](https://arxiv.org/abs/2203.12054)) pretrained on **{dataset}**, {source}: '
                 f'encoder, decoder and skip-connection weights, for continued pretraining, reconstruction pictures '
                 f'or decoder studies. For features, use the encoder alone.{init}')
        details, usage = _full_model_details(run), _full_usage(run)
        results_intro = 'Evaluations of the encoder inside this model.\n\n'
    else:
        intro = (f'A Vision Transformer encoder pretrained with RandSAC (Random Segments with Autoregressive Coding, '
                 f'[arXiv:2203.12054](https://arxiv.org/abs/2203.12054)) on **{dataset}**, {source}. '
                 f'Only the encoder is published: no decoder, no pretraining-only tensors.{init}')
        details, usage, results_intro = _architecture(run), _usage(run), ''
    sections = [
        f'# {run.name}',
        intro,
        '## Model details\n\n' + details,
        '## Pretraining recipe\n\nFrom the checkpoint\'s stored configuration and its `log.jsonl`.\n\n' + _recipe(run),
        '## Hardware and wall-clock\n\n' + _hardware_section(run),
        '## Evaluation\n\n' + results_intro + _results_section(run) + _against_pixels(run),
        *(['## Limitations and notes\n\n' + run.notes.strip()] if run.notes.strip() else []),
        '## Usage\n\n' + usage,
        f'## License\n\n`{run.pretrained_cfg.get("license", "apache-2.0")}` for these weights and the code that '
        f'made them. The pretraining data keeps its own license.',
        '## Citation\n\n```bibtex\n' + CITATION + '\n```',
    ]
    card = ModelCard(f'---\n{card_data(run).to_yaml()}\n---\n\n' + '\n\n'.join(sections) + '\n')
    return str(card)


def run_from_packaged(meta_path: str) -> RunRecord:
    """The run record of a packaged `<name>.json` (`hub.py package`), to (re)write its card without the checkpoint."""
    from safetensors import safe_open

    with open(meta_path) as f:
        meta = json.load(f)
    config, pretraining = meta['config'], dict(meta.get('pretraining') or {})
    weights = os.path.join(os.path.dirname(os.path.abspath(meta_path)), meta['name'] + '.safetensors')
    with safe_open(weights, framework='pt') as f:
        num_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
        metadata = f.metadata() or {}
    kind = 'pretrain' if metadata.get('model_name') else 'encoder'
    state_cfg = pretraining.get('config') or {}
    model_args = config.get('model_args') or {}
    encoder_name = metadata.get('encoder_name') or meta['name'].split('.', 1)[0]
    encoder_kwargs = json.loads(metadata['encoder_kwargs']) if metadata.get('encoder_kwargs') else dict(
        img_size=state_cfg.get('img_size'), in_chans=model_args.get('in_chans'))
    return RunRecord(
        name=meta['name'], repo_id=meta['hf_hub_id'], encoder_name=encoder_name, encoder_kwargs=encoder_kwargs,
        architecture=config['architecture'], model_args=model_args,
        pretrained_cfg=dict(config.get('pretrained_cfg') or {}), num_params=num_params,
        checkpoint=pretraining.get('checkpoint', '?'), checkpoint_sha256=pretraining.get('checkpoint_sha256', '?'),
        state={k: v for k, v in pretraining.items() if k not in ('checkpoint', 'checkpoint_sha256', 'log')},
        log=list(pretraining.get('log') or []),
        results=[(e.get('file', 'results.json'), {k: v for k, v in e.items() if k != 'file'})
                 for e in meta.get('evaluations') or []],
        kind=kind, notes=str(meta.get('notes') or ''))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
