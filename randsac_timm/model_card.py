"""The Hub model card (`README.md`) of an exported encoder, written only from the run's own records.

Every number on the card comes from the pretraining checkpoint, its `log.jsonl`, or a `results.json` of
`eval_linear.py` / `eval_finetune.py` (percentages are those values rounded to two decimals); a metric no
results file holds is not shown. `hub.py` gathers the records into a `RunRecord`; `render_card` formats them.
"""
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ['RunRecord', 'CITATION', 'METRICS', 'render_card', 'format_pct']

CITATION = '''@article{hua2022randsac,
  title   = {Self-supervision through Random Segments with Autoregressive Coding (RandSAC)},
  author  = {Hua, Tianyu and Tian, Yonglong and Ren, Sucheng and Zhao, Hang and Sigal, Leonid},
  journal = {arXiv preprint arXiv:2203.12054},
  year    = {2022}
}'''

# results.json top-level key -> card column
METRICS: Tuple[Tuple[str, str], ...] = (
    ('top1', 'top-1 (%)'),
    ('knn_top1', 'kNN top-1 (%)'),
    ('pixel_linear_top1', 'raw-pixel linear top-1 (%)'),
    ('pixel_knn_top1', 'raw-pixel kNN top-1 (%)'),
)

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

    @property
    def config(self) -> Dict[str, Any]:
        return self.state.get('config') or {}

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
    """'1 x NVIDIA H100 (cuda:0)' / 'CPU x86_64 (cpu)' from a log 'start' record or a results 'hardware' dict."""
    device = record.get('device', '?')
    gpu, cpu = record.get('gpu'), record.get('cpu') or '?'
    procs = record.get('world_size')
    if gpu:
        text = f'{procs} x {gpu}' if procs else str(gpu)
    else:
        text = f'CPU {cpu}'
        if record.get('cpu_threads'):
            text += f', {record["cpu_threads"]} threads'
    versions = ', '.join(f'{lib} {record[lib]}' for lib in ('torch', 'timm') if record.get(lib))
    return f'{text} ({device}{"; " + versions if versions else ""})'


def _front_matter(run: RunRecord) -> str:
    dataset = run.config.get('dataset')
    lines = ['---', 'library_name: timm', f'license: {run.pretrained_cfg.get("license", "apache-2.0")}',
             'pipeline_tag: image-feature-extraction', 'tags:', '- image-feature-extraction', '- timm', '- randsac',
             '- self-supervised']
    if dataset:
        lines += ['datasets:', f'- {dataset}']
    return '\n'.join(lines + ['---'])


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
    starts, ends, resumes = run.events('start'), run.events('end'), run.events('resume')
    if not starts:
        return (f'No `log.jsonl` was found beside the checkpoint, so the hardware is not recorded. The checkpoint '
                f'records a wall-clock of {_duration(run.state.get("wall_time_s"))} for its last session.')
    rows = []
    for i, start in enumerate(starts):
        end = ends[i] if i < len(ends) else None
        rows.append((str(i + 1), _hardware(start), f'{start.get("step")} -> {end.get("step") if end else "?"}',
                     _duration(end.get('wall_time_s')) if end else 'no end record (interrupted)'))
    text = _table(('session', 'hardware', 'steps', 'wall-clock'), rows)
    if resumes:
        text += f'\n\nThe run was resumed from a checkpoint {len(resumes)} time(s); each session is listed.'
    return text


def _protocol(results: Dict[str, Any]) -> str:
    protocol = results.get('protocol')
    hyper = results.get('hyperparameters') if isinstance(results.get('hyperparameters'), dict) else {}
    # the schedule length belongs next to the number: a 2-epoch fine-tune is not the paper's 100
    details = [str(protocol['mode'])] if isinstance(protocol, dict) and protocol.get('mode') else []
    details += [f'{hyper["epochs"]} epochs'] if hyper.get('epochs') else []
    if isinstance(protocol, dict):
        name = str(protocol.get('name', 'evaluation')).replace('_', ' ')
    else:
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
        if r.get('command'):
            notes.append(f'- `{fname}` command: `{r["command"]}`')
    if notes:
        text += '\n\n' + '\n'.join(notes)
    text += ('\n\n"top-1" is the linear probe, or fine-tuning for a fine-tuning record; the raw-pixel columns are the '
             'same head / kNN on flattened pixels, the baseline any encoder should beat.')
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
builds the architecture with random weights. `randsac_timm.data.build_eval_transform` reproduces the evaluation
preprocessing of the results above.'''


def render_card(run: RunRecord) -> str:
    """The model card of `run` as Markdown with Hub front matter."""
    cfg = run.config
    dataset = cfg.get('dataset', 'an unrecorded data set')
    sections = [
        _front_matter(run),
        f'# {run.name}',
        f'A Vision Transformer encoder pretrained with RandSAC (Random Segments with Autoregressive Coding, '
        f'[arXiv:2203.12054](https://arxiv.org/abs/2203.12054)) on **{dataset}**, exported by '
        f'randsac-timm from `{run.checkpoint}` (SHA-256 `{run.checkpoint_sha256}`). '
        f'Only the encoder is published: no decoder, no pretraining-only tensors.',
        '## Model details\n\n' + _architecture(run),
        '## Pretraining recipe\n\nFrom the checkpoint\'s stored configuration and its `log.jsonl`.\n\n' + _recipe(run),
        '## Hardware and wall-clock\n\n' + _hardware_section(run),
        '## Evaluation\n\n' + _results_section(run),
        '## Usage\n\n' + _usage(run),
        f'## License\n\n`{run.pretrained_cfg.get("license", "apache-2.0")}` for these weights and the code that '
        f'made them. The pretraining data keeps its own license.',
        '## Citation\n\n```bibtex\n' + CITATION + '\n```',
    ]
    return '\n\n'.join(sections) + '\n'
