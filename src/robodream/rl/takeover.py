"""Takeover sources: who may act instead of the policy during a rollout, and when.

The protocol is HG-DAgger's (Kelly et al., "HG-DAgger: Interactive Imitation Learning with
Human Experts", ICRA 2019): the learner drives; an expert watches, takes control when the
learner goes wrong, drives until the situation is recovered and hands control back, as many
times as needed. GigaBrain-0.5M* (RAMP, arXiv 2602.12099) collects its Human-in-the-Loop
Rollouts this way and co-trains the world model and the policy on them: frames the takeover
source acted on are flagged ``complementary_info.is_intervention`` (:mod:`robodream.rl.rewards`).

At every step of a rollout (:mod:`robodream.rl.rollout`) the policy proposes an action and the
source answers ``(take_over, action)`` through :meth:`TakeoverSource.act`. Sources
(:data:`TAKEOVER_SOURCES`, built by :func:`make_takeover` from a :class:`TakeoverConfig`):

* ``"expert"`` (:class:`ExpertTakeover`, default): Meta-World's scripted expert, with an
  automatic trigger (the OR of two rules, see :class:`ExpertTakeover`): the policy's xyz
  command disagrees with the expert's, or the shaped reward stalls. The expert then keeps
  control for ``takeover_steps`` and hands back; at most ``max_interventions`` times an episode.
* ``"keyboard"`` (:class:`KeyboardTakeover`): a person holds Shift (or ``t``) to take over and
  drives the end effector with the keys of :data:`KEY_AXES`; Space toggles the gripper. Keys
  come from a :class:`KeySource`: :class:`PynputKeys` (the real keyboard, through pynput, in an
  X session run from a terminal) or :class:`SimulatedKeys` (a script, for tests).
* ``"none"`` (:class:`NoTakeover`): plain policy rollouts.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from robodream.envs.meta_world import EXPERT_TARGETS
from robodream.errors import ConfigError

#: Names of the takeover sources (``robodream rollout --takeover``).
TAKEOVER_SOURCES = ("expert", "keyboard", "none")


@dataclass
class TakeoverConfig:
    """Which takeover source acts during rollouts, and its settings (``robodream rollout``)."""

    source: str = "expert"  # expert (scripted, automatic trigger), keyboard (a person) or none
    # Expert: steps the expert keeps control once it takes over, that step included, then hands
    # back (20: up to 20 cm of hand motion, 1/4 s at 80 Hz).
    takeover_steps: int = 20
    # Expert: takeovers per episode at most; past it the policy drives to the end (failures are
    # recorded too).
    max_interventions: int = 5
    # Expert trigger 1 (disagreement): the xyz distance between the policy's and the expert's
    # action (per-axis commands in [-1, 1], 1 = 1 cm a step) above which a step disagrees.
    disagree_threshold: float = 1.0
    # Expert trigger 1 (disagreement): consecutive disagreeing steps that make the expert take
    # over (0: rule off).
    disagree_steps: int = 10
    # Expert trigger 2 (stall): take over when the best shaped reward of this many last steps is
    # not above the best before them by more than --stall-delta (0: rule off).
    stall_steps: int = 30
    # Expert trigger 2 (stall): the least rise of Meta-World's shaped reward (in [0, 10]) that
    # counts as progress.
    stall_delta: float = 0.05
    expert_target: str = "tcp"  # the point the reach experts steer: tcp or hand (MetaWorldEnv.expert_action)
    keyboard_hz: float = 20.0  # keyboard: env steps a second with the real keyboard (a person's pace)
    keyboard_gain: float = 1.0  # keyboard: command per held direction key, in (0, 1] (1 = 1 cm a step)


@dataclass
class StepInfo:
    """What a takeover source sees at one step, besides the env and the proposed action.

    t: steps taken so far in the episode (0 before the first action).
    images: (n_cameras, H, W, 3) uint8, the current observation.
    state: (Ds,) float32, the current proprioceptive state.
    dense_reward: Meta-World's shaped reward of the last step (in [0, 10]); None at t = 0.
    """

    t: int
    images: np.ndarray
    state: np.ndarray
    dense_reward: float | None


class TakeoverSource(Protocol):
    """Decides, step by step, whether to act instead of the policy.

    ``interventions``: takeovers started in the current episode (each is one or more
    consecutive takeover steps).
    """

    name: str
    interventions: int

    def reset(self, seed: int) -> None:
        """Start an episode (env seed ``seed``)."""

    def act(self, env: Any, proposed: np.ndarray, info: StepInfo) -> tuple[bool, np.ndarray]:
        """``(take_over, action)`` for this step.

        env: the :class:`~robodream.envs.meta_world.MetaWorldEnv` (its privileged
        ``expert_action()`` is for scripted sources); proposed: (4,) float32 in [-1, 1], the
        policy's action. ``action`` is (4,) in [-1, 1]: ``proposed`` when ``take_over`` is False.
        """

    def close(self) -> None:
        """Release what the source holds (a keyboard listener, a window)."""


class NoTakeover:
    """``"none"``: the policy always acts."""

    name = "none"

    def __init__(self) -> None:
        self.interventions = 0

    def reset(self, seed: int) -> None:
        self.interventions = 0

    def act(self, env: Any, proposed: np.ndarray, info: StepInfo) -> tuple[bool, np.ndarray]:
        return False, proposed

    def close(self) -> None:
        pass


class ExpertTakeover:
    """``"expert"``: the scripted expert takes over when the policy goes wrong (HG-DAgger).

    Trigger, checked at every step the policy is in control, over the steps since the episode
    started or the expert last handed back (so a handback gives the policy a fresh chance):

    1. **disagreement**: ``||a_policy[:3] - a_expert[:3]||_2 > disagree_threshold`` (default
       1.0) for ``disagree_steps`` (default 10) consecutive steps. Commands are per-axis in
       [-1, 1] (1 cm a step); the expert saturates far from its target, so a distance above 1
       means the policy is off by a full step's worth: pointing at right angles to the expert,
       or standing still while the expert moves at full speed. Ten steps (1/8 s) let a roughly
       right policy disagree briefly (a chunk boundary, the expert's own switch of phase).
    2. **stall**: the best shaped reward (``complementary_info.dense_reward``, in [0, 10]) of
       the last ``stall_steps`` (default 30) steps is not more than ``stall_delta`` (default
       0.05, half a percent of the range) above the best before them. It catches what rule 1
       misses: a policy hovering or dithering near the goal, where the expert's own command is
       small.

    When either fires (and fewer than ``max_interventions`` takeovers happened this episode),
    the expert acts for ``takeover_steps`` steps, that step included, then hands back.

    Args:
        takeover_steps: >= 1. max_interventions: >= 0 (0: never). disagree_threshold: > 0.
        disagree_steps, stall_steps: >= 0, 0 disables the rule. stall_delta: >= 0.
        expert_target: see :meth:`MetaWorldEnv.expert_action`.

    Raises:
        ConfigError: a setting out of range (see :func:`check_takeover`).
    """

    name = "expert"

    def __init__(self, *, takeover_steps: int = 20, max_interventions: int = 5, disagree_threshold: float = 1.0,
                 disagree_steps: int = 10, stall_steps: int = 30, stall_delta: float = 0.05,
                 expert_target: str = "tcp") -> None:
        _check_expert_settings(takeover_steps, max_interventions, disagree_threshold, disagree_steps, stall_steps,
                               stall_delta, expert_target)
        self.takeover_steps, self.max_interventions = takeover_steps, max_interventions
        self.disagree_threshold, self.disagree_steps = disagree_threshold, disagree_steps
        self.stall_steps, self.stall_delta = stall_steps, stall_delta
        self.expert_target = expert_target
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.interventions = 0
        self._remaining = 0  # expert steps left in the current takeover
        self._hand_back()

    def _hand_back(self) -> None:
        self._rewards: list[float] = []  # shaped rewards since the policy (re)gained control
        self._disagree_run = 0  # consecutive steps above disagree_threshold

    def act(self, env: Any, proposed: np.ndarray, info: StepInfo) -> tuple[bool, np.ndarray]:
        expert = np.clip(np.asarray(env.expert_action(self.expert_target), np.float32), -1.0, 1.0)
        if self._remaining > 0:  # the expert is driving
            self._remaining -= 1
            if self._remaining == 0:
                self._hand_back()
            return True, expert
        if info.dense_reward is not None and info.t > 0:
            self._rewards.append(float(info.dense_reward))
        distance = float(np.linalg.norm(np.asarray(proposed, np.float32)[:3] - expert[:3]))
        self._disagree_run = self._disagree_run + 1 if distance > self.disagree_threshold else 0
        if self.interventions < self.max_interventions and (self.disagrees() or self.stalled()):
            self.interventions += 1
            self._remaining = self.takeover_steps - 1
            if self._remaining == 0:
                self._hand_back()
            return True, expert
        return False, proposed

    def disagrees(self) -> bool:
        """Rule 1: the last ``disagree_steps`` steps all disagreed with the expert."""
        return self.disagree_steps > 0 and self._disagree_run >= self.disagree_steps

    def stalled(self) -> bool:
        """Rule 2: no new best shaped reward (by more than ``stall_delta``) in the last ``stall_steps``."""
        k, r = self.stall_steps, self._rewards
        return k > 0 and len(r) > k and max(r[-k:]) <= max(r[:-k]) + self.stall_delta

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- keyboard
#: Direction keys of :class:`KeyboardTakeover`: key -> (action axis, sign), in Meta-World's world
#: frame seen from behind the robot: w/s forward/back (+y/-y, away from / towards the robot's
#: base), d/a right/left (+x/-x), r/f up/down (+z/-z).
KEY_AXES = {"w": (1, 1.0), "s": (1, -1.0), "d": (0, 1.0), "a": (0, -1.0), "r": (2, 1.0), "f": (2, -1.0)}
#: Holding any of these keys takes over (Shift, or ``t``); releasing hands back.
TAKEOVER_KEYS = frozenset({"shift", "t"})
#: Pressing this key toggles the gripper between open (-1) and closed (+1) while taking over.
GRIPPER_KEY = "space"


class KeySource(Protocol):
    """Where :class:`KeyboardTakeover` reads keys from. Key names: lower-case characters
    (``"w"``), ``"shift"`` (either Shift), ``"space"`` and pynput's other special-key names."""

    def poll(self) -> tuple[frozenset[str], frozenset[str]]:
        """``(held, pressed)``: the keys held now, and those pressed since the last poll (a tap
        shorter than a step still counts)."""

    def reset(self) -> None:
        """A new episode starts."""

    def close(self) -> None:
        """Stop listening."""


class SimulatedKeys:
    """A scripted :class:`KeySource`: ``steps[i]`` are the keys held at step i of every episode
    (an iterable of key names, or one string of names separated by spaces, e.g. ``"t w"``);
    nothing is held after the script. A key counts as pressed at the step it starts being held."""

    def __init__(self, steps: Sequence[Iterable[str] | str]) -> None:
        self.steps = [frozenset(s.split() if isinstance(s, str) else s) for s in steps]
        self.reset()

    def reset(self) -> None:
        self._i, self._prev = 0, frozenset()

    def poll(self) -> tuple[frozenset[str], frozenset[str]]:
        held = self.steps[self._i] if self._i < len(self.steps) else frozenset()
        self._i += 1
        pressed, self._prev = held - self._prev, held
        return held, pressed

    def close(self) -> None:
        pass


class PynputKeys:
    """The real keyboard, through pynput's global listener (an X session; run from a terminal,
    whose echo is turned off while listening so the driving keys do not litter it).

    Raises:
        ConfigError: no terminal (stdin is not a TTY), or pynput cannot start (no display).
    """

    def __init__(self) -> None:
        check_keyboard_available()
        from pynput import keyboard  # checked above

        self._keyboard = keyboard
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._pressed: set[str] = set()
        self._listener = keyboard.Listener(on_press=self._on_press, on_release=self._on_release)
        self._listener.start()
        self._listener.wait()
        self._tty = _EchoOff()

    def _name(self, key) -> str | None:
        char = getattr(key, "char", None)
        if char:
            return char.lower()
        name = getattr(key, "name", None)
        return name.removesuffix("_l").removesuffix("_r") if name else None

    def _on_press(self, key) -> None:
        name = self._name(key)
        if name:
            with self._lock:
                self._held.add(name)
                self._pressed.add(name)

    def _on_release(self, key) -> None:
        name = self._name(key)
        with self._lock:
            self._held.discard(name)
            if name == "shift":  # a character typed with Shift may be released as another case
                self._held -= {k for k in self._held if len(k) == 1}

    def poll(self) -> tuple[frozenset[str], frozenset[str]]:
        with self._lock:
            held, pressed = frozenset(self._held), frozenset(self._pressed)
            self._pressed.clear()
        return held, pressed

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._listener.stop()
        self._tty.restore()


class KeyboardTakeover:
    """``"keyboard"``: a person takes over by holding Shift (or ``t``) (HG-DAgger's human expert).

    While a takeover key is held, the action is ``gain * (sum of the held direction keys of``
    :data:`KEY_AXES` ``)`` on x, y, z (each in [-1, 1]: 1 cm a step at gain 1) and the gripper
    command: at the start of each takeover it keeps the policy's (closed, +1, if the policy's
    effort is > 0, else open, -1), so taking over never drops a held object; Space toggles it.
    Releasing the takeover key hands control back to the policy.

    Args:
        keys: where keys come from (:class:`PynputKeys`, :class:`SimulatedKeys`).
        gain: command per held direction key, in (0, 1].
        rate_hz: pace the rollout to this many steps a second (a person's reaction time); None:
            as fast as the computer goes (simulated keys).
        view: called with the current images (n_cameras, H, W, 3) uint8 at every step, to show
            the person the scene (:class:`LiveView`); None: nothing shown.
    """

    name = "keyboard"

    def __init__(self, keys: KeySource, *, gain: float = 1.0, rate_hz: float | None = None,
                 view: Callable[[np.ndarray], None] | None = None) -> None:
        if not 0 < gain <= 1:
            raise ConfigError(f"--keyboard-gain must be in (0, 1], got {gain}")
        if rate_hz is not None and not rate_hz > 0:
            raise ConfigError(f"--keyboard-hz must be > 0, got {rate_hz}")
        self.keys, self.gain, self.rate_hz, self.view = keys, gain, rate_hz, view
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.interventions = 0
        self._active = False
        self._gripper = -1.0
        self._next_t: float | None = None
        self.keys.reset()

    def act(self, env: Any, proposed: np.ndarray, info: StepInfo) -> tuple[bool, np.ndarray]:
        if self.view is not None:
            self.view(info.images)
        if self.rate_hz is not None:
            now = time.perf_counter()
            if self._next_t is not None and now < self._next_t:
                time.sleep(self._next_t - now)
            self._next_t = max(now, self._next_t or now) + 1.0 / self.rate_hz
        held, pressed = self.keys.poll()
        if not held & TAKEOVER_KEYS:
            self._active = False
            return False, proposed
        if not self._active:  # a new takeover: keep the policy's gripper command
            self._active = True
            self.interventions += 1
            self._gripper = 1.0 if float(proposed[3]) > 0 else -1.0
        if GRIPPER_KEY in pressed:
            self._gripper = -self._gripper
        action = np.zeros(4, np.float32)
        for key in held:
            if key in KEY_AXES:
                axis, sign = KEY_AXES[key]
                action[axis] += sign * self.gain
        action[:3] = np.clip(action[:3], -1.0, 1.0)
        action[3] = self._gripper
        return True, action

    def close(self) -> None:
        self.keys.close()
        close = getattr(self.view, "close", None)
        if callable(close):
            close()


class LiveView:
    """A window showing the cameras side by side, updated at every step (matplotlib; the
    figure's own key bindings are switched off, so the driving keys do not save or zoom it)."""

    def __init__(self, scale: int = 4) -> None:
        import matplotlib.pyplot as plt

        for k in [k for k in plt.rcParams if k.startswith("keymap.")]:
            plt.rcParams[k] = []
        plt.rcParams["toolbar"] = "None"
        self._plt, self._scale = plt, scale
        self._fig = self._im = None

    def __call__(self, images: np.ndarray) -> None:
        frame = np.concatenate(list(images), axis=1)  # (H, n_cameras * W, 3)
        if self._fig is None:
            h, w = frame.shape[:2]
            self._fig = self._plt.figure("robodream rollout: hold Shift to take over", figsize=(w * self._scale / 100,
                                                                                                  h * self._scale / 100))
            ax = self._fig.add_axes((0, 0, 1, 1))
            ax.set_axis_off()
            self._im = ax.imshow(frame)
            self._plt.show(block=False)
        else:
            self._im.set_data(frame)
        self._fig.canvas.draw_idle()
        self._fig.canvas.flush_events()

    def close(self) -> None:
        if self._fig is not None:
            self._plt.close(self._fig)
            self._fig = None


class _EchoOff:
    """Turn the terminal's echo off until :meth:`restore` (nothing when stdin is no terminal)."""

    def __init__(self) -> None:
        self._saved = None
        try:
            import termios

            fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            quiet = termios.tcgetattr(fd)
            quiet[3] &= ~(termios.ECHO | termios.ICANON)
            termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
        except Exception:  # not a terminal, or no termios (Windows): nothing to restore
            self._saved = None

    def restore(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None


def check_keyboard_available() -> None:
    """Raises ConfigError (one line) unless the real keyboard can be read: stdin is a terminal
    and pynput can start (on Linux: an X display)."""
    if not sys.stdin.isatty():
        raise ConfigError("the keyboard takeover source needs a terminal (stdin is not a TTY): run robodream "
                          "rollout --takeover keyboard interactively, or choose --takeover expert or none")
    try:
        from pynput import keyboard  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError("the keyboard source needs pynput: pip install -e '.[teleop]' (the teleop extra)") from None
    except Exception as e:  # pynput raises ImportError (or others) without a display
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"the keyboard source needs a display/terminal: pynput cannot start ({first})") from None


# ----------------------------------------------------------------------------- construction
def _check_expert_settings(takeover_steps, max_interventions, disagree_threshold, disagree_steps, stall_steps,
                           stall_delta, expert_target) -> None:
    for flag, v, lo in (("--takeover-steps", takeover_steps, 1), ("--max-interventions", max_interventions, 0),
                        ("--disagree-steps", disagree_steps, 0), ("--stall-steps", stall_steps, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{flag} must be an integer >= {lo}, got {v!r}")
    if not disagree_threshold > 0:
        raise ConfigError(f"--disagree-threshold must be > 0, got {disagree_threshold}")
    if not stall_delta >= 0:
        raise ConfigError(f"--stall-delta must be >= 0, got {stall_delta}")
    if expert_target not in EXPERT_TARGETS:
        raise ConfigError(f"--expert-target must be one of {', '.join(EXPERT_TARGETS)}, got {expert_target!r}")


def check_takeover(cfg: TakeoverConfig, *, workers: int = 1, keys: KeySource | None = None) -> None:
    """Validate a takeover configuration before any rollout starts.

    Raises:
        ConfigError: an unknown source (the choices are in the message), a setting out of range,
            a keyboard source with ``workers > 1`` (one person drives one rollout), or, without
            injected ``keys``, a keyboard with no terminal or no display.
    """
    if cfg.source not in TAKEOVER_SOURCES:
        raise ConfigError(f"unknown takeover source {cfg.source!r}; choose one of {', '.join(TAKEOVER_SOURCES)}")
    if cfg.source == "expert":
        _check_expert_settings(cfg.takeover_steps, cfg.max_interventions, cfg.disagree_threshold,
                               cfg.disagree_steps, cfg.stall_steps, cfg.stall_delta, cfg.expert_target)
    if cfg.source == "keyboard":
        if not 0 < cfg.keyboard_gain <= 1:
            raise ConfigError(f"--keyboard-gain must be in (0, 1], got {cfg.keyboard_gain}")
        if not cfg.keyboard_hz > 0:
            raise ConfigError(f"--keyboard-hz must be > 0, got {cfg.keyboard_hz}")
        if workers > 1:
            raise ConfigError(f"the keyboard takeover source drives one rollout at a time; use --workers 1, "
                              f"not {workers}")
        if keys is None:
            check_keyboard_available()


def make_takeover(cfg: TakeoverConfig, keys: KeySource | None = None) -> TakeoverSource:
    """The source ``cfg.source`` names. A keyboard source reads ``keys`` when given (e.g.
    :class:`SimulatedKeys`, at full speed, nothing shown); else the real keyboard
    (:class:`PynputKeys`), paced to ``cfg.keyboard_hz`` with a :class:`LiveView` window.

    Raises:
        ConfigError: as :func:`check_takeover`.
    """
    check_takeover(cfg, keys=keys)
    if cfg.source == "expert":
        return ExpertTakeover(takeover_steps=cfg.takeover_steps, max_interventions=cfg.max_interventions,
                              disagree_threshold=cfg.disagree_threshold, disagree_steps=cfg.disagree_steps,
                              stall_steps=cfg.stall_steps, stall_delta=cfg.stall_delta,
                              expert_target=cfg.expert_target)
    if cfg.source == "keyboard":
        if keys is not None:
            return KeyboardTakeover(keys, gain=cfg.keyboard_gain)
        return KeyboardTakeover(PynputKeys(), gain=cfg.keyboard_gain, rate_hz=cfg.keyboard_hz, view=LiveView())
    return NoTakeover()


def takeover_settings(cfg: TakeoverConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that its source uses (for provenance), the trigger rule named."""
    if cfg.source == "expert":
        return {"source": "expert", "trigger": "disagreement OR stall (robodream.rl.takeover.ExpertTakeover)",
                "takeover_steps": cfg.takeover_steps, "max_interventions": cfg.max_interventions,
                "disagree_threshold": cfg.disagree_threshold, "disagree_steps": cfg.disagree_steps,
                "stall_steps": cfg.stall_steps, "stall_delta": cfg.stall_delta, "expert_target": cfg.expert_target}
    if cfg.source == "keyboard":
        return {"source": "keyboard", "trigger": "a person holds Shift or t", "keyboard_gain": cfg.keyboard_gain,
                "keyboard_hz": cfg.keyboard_hz,
                "keys": {**{k: f"{'+' if s > 0 else '-'}{'xyz'[a]}" for k, (a, s) in KEY_AXES.items()},
                         GRIPPER_KEY: "toggle gripper", "shift/t (held)": "take over"}}
    return {"source": "none"}
