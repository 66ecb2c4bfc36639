"""The loop of `hydra/sweeper=optuna` (optuna_sweeper.py): Hydra's Optuna sweeper plugin, with a study that
survives a killed sweep.

The plugin (hydra-optuna-sweeper 1.2) parses the search space and samples; this subclass replaces only its
ask/launch/tell loop, for four things the plugin does not do:
- `n_trials` is the study's total: a re-run of the same command (same `hydra.sweep.dir`, whose SQLite file
  holds the study) runs only the trials still missing, instead of `n_trials` more;
- a trial the killed sweep left running goes back to Optuna's queue (state WAITING) and runs again with its
  parameters, in its own job dir (a `last.pt` there resumes it, launcher/sweep/points.py);
- job number = trial number, so job dir N is trial N across re-runs;
- an infeasible point (the job returns NaN, launcher/sweep/points.py) is a failed trial and the study goes on;
  a job that crashes fails its trial and stops the sweep, as in the plugin.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

from yolo_ddp.logging.sweep import OBJECTIVES

log = logging.getLogger("launcher")


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(self, objectives: list[str], **plugin_args: Any) -> None:
        super().__init__(**plugin_args)
        self.objectives = objectives
        unknown = [o for o in objectives if o not in OBJECTIVES]
        directions = self._get_directions()
        if unknown or not objectives or len(objectives) != len(directions):
            raise ValueError(
                f"Config keys 'hydra.sweeper.objectives' ({objectives}) and 'hydra.sweeper.direction' ({directions}) "
                f"must name the same number of objectives, each one of {list(OBJECTIVES)}; for a speed/accuracy "
                f"front pass 'hydra.sweeper.objectives=[best_mAP50-95,img_per_s]' "
                f"'hydra.sweeper.direction=[maximize,maximize]'."
            )
        if isinstance(self.sampler, functools.partial) and self.sampler.func is optuna.samplers.GridSampler:
            raise ValueError("hydra/sweeper/sampler=grid is not supported here: for a grid, run the basic sweeper "
                             "(drop hydra/sweeper=optuna) with comma-separated values, e.g. train.lr0=0.01,0.001.")

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        for name in fixed:
            space.pop(name, None)
        directions = self._get_directions()
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)  # the SQLite file lives there
        requeued = requeue_interrupted(self.storage, self.study_name)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    directions=directions, load_if_exists=True)
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        todo = max(self.n_trials - finished, 0)
        log.info(f"Optuna study {study.study_name!r} in {self.storage}: {finished} trial(s) finished"
                 + (f", {len(requeued)} interrupted one(s) queued again ({requeued})" if requeued else "")
                 + f"; running {todo} of n_trials={self.n_trials}; directions {directions} on {self.objectives}")
        while todo > 0:
            trials = [study.ask() for _ in range(min(todo, self.n_jobs))]
            overrides = self._configure_trials(trials, space, fixed)
            numbers = [t.number for t in trials]
            consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
            groups = [(trials, overrides)] if consecutive else [([t], [o]) for t, o in zip(trials, overrides,
                                                                                           strict=True)]
            for group, group_overrides in groups:  # job dir N = trial N
                returns = self.launcher.launch(group_overrides, initial_job_idx=group[0].number)
                for trial, ret in zip(group, returns, strict=True):
                    self._tell(study, trial, ret)
            todo -= len(trials)
        self._save_results(study, directions)

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn) -> None:
        try:
            value = ret.return_value  # re-raises a failed job's exception
        except Exception:
            study.tell(trial, state=TrialState.FAIL)
            raise
        values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
        if any(math.isnan(v) for v in values):
            trial.set_user_attr("status", "infeasible or no metric (see its sweep_row.json)")
            study.tell(trial, state=TrialState.FAIL)
            log.info(f"trial {trial.number} failed (infeasible or no metric); the study goes on")
            return
        study.tell(trial, values=values)

    def _save_results(self, study: optuna.Study, directions: list[str]) -> None:
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            log.info("no trial completed; nothing to report")
            return
        if len(directions) < 2:
            best = study.best_trial
            results = {"name": "optuna", "best_trial": best.number, "best_params": best.params,
                       "best_value": best.value}
        else:
            results = {"name": "optuna", "solutions": [{"trial": t.number, "params": t.params, "values": t.values}
                                                       for t in study.best_trials]}
        log.info(f"Optuna results: {results}")
        OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir) / "optimization_results.yaml")


def requeue_interrupted(storage_url: Any, study_name: str | None) -> list[int]:
    """Trials still RUNNING when a sweep starts were cut off by the previous one (a sweep runs its trials
    itself, one study per sweep dir): back to WAITING, so `study.ask()` hands them out again, parameters kept."""
    if not storage_url or not study_name:
        return []
    storage = optuna.storages.RDBStorage(str(storage_url))
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:  # a new study
        return []
    requeued = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                TrialState.WAITING)
        requeued.append(t.number)
    storage.remove_session()
    return requeued
