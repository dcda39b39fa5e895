"""Where training progress goes: metrics.jsonl, TensorBoard events and a console progress bar.

Only process 0 writes. `metrics.jsonl` gets one JSON object per logged step and is appended
to, so a resumed run continues the same file.
"""
import json
import os

import jax
import numpy as np
import tqdm


class MetricWriter:

    def __init__(self, workdir: str, total_steps: int, initial_step: int):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from vtx.data.tf_on_host import tf  # TensorBoard events; the input pipeline has loaded TF
        self._tf = tf
        self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
        self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit='step', dynamic_ncols=True)

    def write(self, step: int, split: str, metrics: dict):
        if not self.active:
            return
        record = {'step': int(step), 'split': split}
        record.update({k: float(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + '\n')
        self._jsonl.flush()
        with self._tb.as_default(step=int(step)):
            for k, v in metrics.items():
                self._tf.summary.scalar(f'{split}/{k}', float(v))
        self._tb.flush()
        if split == 'train':
            self._bar.set_postfix(loss=f"{record['loss']:.4f}",
                                  clips_s=f"{record.get('clips_per_sec', np.nan):.1f}")
        else:
            self.message(f"eval @ step {step}: " + ', '.join(
                f'{k}={v:.4f}' for k, v in record.items() if k not in ('step', 'split')))

    def advance(self, steps: int):
        """Moves the bar by `steps` finished steps (not dispatched ones: JAX runs ahead)."""
        if self.active:
            self._bar.update(steps)

    def message(self, text: str):
        if self.active:
            tqdm.tqdm.write(text)

    def close(self, summary: str = ''):
        """Closes the files; `summary` (where the outputs went) is printed below the bar."""
        if self.active:
            self._bar.close()
            self._jsonl.close()
            self._tb.close()
            if summary:
                print(summary)
