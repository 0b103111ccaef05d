"""Cartpole with PPO: the reinforcement-learning task of G.pt (thesis Sec. 3.3).

"Our policy is a three-layer MLP with 32 hidden units and SeLU activations. We also train a
separate critic network with the same architecture as the policy; we only model the policy's
parameters. We train for 500 iterations using PPO and Adam with beta1=0.9 and beta2=0.999."

Everything here is pure torch and batched over runs: ``CartpoleEnv`` steps any number of
environments at once (it reproduces gymnasium's CartPole-v1 dynamics), and ``CartpoleTask``
trains R policies together with their parameters stacked along a leading run axis, one Adam over
the stacked tensors (Adam is element-wise, so each run follows the trajectory it would follow
alone). A checkpoint's metric is the mean return of its greedy policy.

Speed (run-iterations/s, checkpoints scored/s) and the thread setting to use on a shared CPU:
BENCHMARKS.md, "G.pt Cartpole".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.tasks.base import PermutationGroup, StepCallback, Task, init_params

# gymnasium's CartPole-v1 constants (gymnasium/envs/classic_control/cartpole.py).
GRAVITY = 9.8
MASSCART = 1.0
MASSPOLE = 0.1
TOTAL_MASS = MASSPOLE + MASSCART
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASSPOLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02  # seconds between state updates
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
MAX_EPISODE_STEPS = 500  # the TimeLimit of CartPole-v1
RESET_BOUND = 0.05


def cartpole_dynamics(
    state: torch.Tensor, action: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step of CartPole-v1 for a batch: ``state [..., 4]`` (x, x_dot, theta,
    theta_dot), ``action [...]`` in {0, 1} (push left, push right). Returns the next state and
    whether it is terminal (|x| > 2.4 or |theta| > 12 degrees)."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(action.bool(), FORCE_MAG, -FORCE_MAG).to(state.dtype)
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + POLEMASS_LENGTH * theta_dot**2 * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * costheta**2 / TOTAL_MASS)
    )
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    nxt = torch.stack(
        (x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc),
        -1,
    )
    terminated = (nxt[..., 0].abs() > X_THRESHOLD) | (nxt[..., 2].abs() > THETA_THRESHOLD)
    return nxt, terminated


class EnvStep(NamedTuple):
    """What ``CartpoleEnv.step`` returns; ``obs`` is already reset where the episode ended,
    ``final_obs`` is the state the step reached (before any reset)."""

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor


class CartpoleEnv:
    """Vectorised CartPole-v1 in pure torch (thesis Sec. 3.3's RL task).

    Reproduces gymnasium's CartPole-v1 dynamics: Euler integration with tau 0.02, gravity 9.8,
    cart mass 1.0, pole mass 0.1, half-length 0.5, force 10; an episode terminates when
    |x| > 2.4 or |theta| > 12 degrees and is truncated after 500 steps; reward 1 per step
    (including the terminal one); states reset to U(-0.05, 0.05)^4. Finished environments reset
    automatically.

    ``batch_shape`` is any shape, e.g. ``(R, E)`` for R runs of E environments. ``generator`` is
    one ``torch.Generator`` for all environments, or a sequence of ``batch_shape[0]`` generators,
    one per leading index, so that row r's resets depend only on its own generator (a run's
    trajectory is then independent of the other runs it is batched with).
    """

    def __init__(
        self,
        batch_shape: int | Sequence[int],
        generator: torch.Generator | Sequence[torch.Generator],
        max_steps: int = MAX_EPISODE_STEPS,
        noise_block: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
        self.generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        if len(self.generators) > 1 and len(self.generators) != self.batch_shape[0]:
            raise ValueError(
                f"{len(self.generators)} generators for batch shape {self.batch_shape}: pass one "
                "generator, or one per leading index"
            )
        self.max_steps = max_steps
        self.noise_block = noise_block
        self.device = torch.device(device)
        self._noise = torch.empty(0)
        self._noise_pos = 0
        self.state = torch.zeros(*self.batch_shape, 4, device=self.device)
        self.steps = torch.zeros(self.batch_shape, dtype=torch.long, device=self.device)

    def _reset_states(self) -> torch.Tensor:
        """Fresh U(-0.05, 0.05) states for every environment (used where one is needed).

        Drawn in blocks of ``noise_block`` steps per generator, a fixed amount per step, so each
        generator's stream does not depend on which environments happened to finish.
        """
        if self._noise_pos == self._noise.shape[0]:
            k = self.noise_block
            if len(self.generators) == 1:
                self._noise = torch.rand(k, *self.batch_shape, 4, generator=self.generators[0])
            else:
                row = self.batch_shape[1:]
                self._noise = torch.stack(
                    [torch.rand(k, *row, 4, generator=g) for g in self.generators], 1
                )
            self._noise = ((self._noise * 2 - 1) * RESET_BOUND).to(self.device)
            self._noise_pos = 0
        self._noise_pos += 1
        return self._noise[self._noise_pos - 1]

    def reset(self) -> torch.Tensor:
        """Reset every environment; returns the observations ``[*batch_shape, 4]``."""
        self.state = self._reset_states().clone()
        self.steps = torch.zeros(self.batch_shape, dtype=torch.long, device=self.device)
        return self.state.clone()

    def step(self, action: torch.Tensor) -> EnvStep:
        """Apply ``action [*batch_shape]`` (0 left, 1 right) everywhere; reset finished envs."""
        nxt, terminated = cartpole_dynamics(self.state, action)
        self.steps = self.steps + 1
        truncated = self.steps >= self.max_steps
        done = terminated | truncated
        fresh = self._reset_states()
        self.state = torch.where(done.unsqueeze(-1), fresh, nxt)
        self.steps = torch.where(done, 0, self.steps)
        reward = torch.ones(self.batch_shape, device=self.device)
        return EnvStep(self.state.clone(), reward, terminated, truncated, nxt)


class PolicyMLP(nn.Module):
    """Sec. 3.3's policy: a three-layer MLP, 4 -> 32 -> 32 -> 2 action logits, SELU activations.

    The critic has the same architecture with ``out_features=1`` (the state value).
    """

    def __init__(self, in_features: int = 4, hidden: int = 32, out_features: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.selu(self.fc2(F.selu(self.fc1(x)))))


def batched_mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``PolicyMLP`` for N stacked networks at once: ``params`` from ``ParamLayout.unflatten``
    (``{name: [N, *shape]}``), ``x [N, B, in]`` -> ``[N, B, out]``."""
    h = x
    for i, layer in enumerate(("fc1", "fc2", "fc3")):
        w, b = params[f"{layer}.weight"], params[f"{layer}.bias"]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < 2:
            h = F.selu(h)
    return h


def _policy_groups(hidden: int) -> tuple[PermutationGroup, ...]:
    return (
        (hidden, (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))),
        (hidden, (("fc2.weight", 0), ("fc2.bias", 0), ("fc3.weight", 1))),
    )


class CartpoleTask(Task):
    """CartPole-v1 policies trained with PPO (thesis Sec. 3.3); the metric is the return.

    Per iteration every run collects ``rollout_steps`` steps from ``num_envs`` environments, then
    takes ``ppo_epochs`` passes of ``minibatches`` clipped-surrogate steps (GAE advantages,
    normalised per run and minibatch; truncated episodes bootstrap from the critic). Policy and
    critic share one Adam (beta1 0.9, beta2 0.999); only the policy's parameters are modelled.
    Gradients are clipped per run to ``max_grad_norm`` (policy and critic together, as
    ``clip_grad_norm_`` would for a run alone); ``None`` disables clipping. The recipe's values
    come from ``conf/task/cartpole.yaml`` (``tasks.build_task("cartpole")``).
    """

    def __init__(
        self,
        *,
        iterations: int,
        num_envs: int,
        rollout_steps: int,
        ppo_epochs: int,
        minibatches: int,
        lr: float,
        gamma: float,
        gae_lambda: float,
        clip: float,
        value_coef: float,
        entropy_coef: float,
        max_grad_norm: float | None,
        eval_episodes: int,
        eval_seed: int = 0,
        hidden: int = 32,
        eval_chunk: int = 8192,
        compact_every: int = 20,
    ) -> None:
        super().__init__(
            "cartpole",
            PolicyMLP(hidden=hidden),
            ("return",),
            _policy_groups(hidden),
            iterations,
        )
        if (num_envs * rollout_steps) % minibatches:
            raise ValueError(
                f"num_envs * rollout_steps = {num_envs * rollout_steps} is not divisible by "
                f"minibatches = {minibatches}"
            )
        self.num_envs, self.rollout_steps = num_envs, rollout_steps
        self.ppo_epochs, self.minibatches = ppo_epochs, minibatches
        self.lr, self.gamma, self.gae_lambda, self.clip = lr, gamma, gae_lambda, clip
        self.value_coef, self.entropy_coef = value_coef, entropy_coef
        self.max_grad_norm = max_grad_norm
        self.eval_episodes, self.eval_seed = eval_episodes, eval_seed
        self.hidden = hidden
        self.eval_chunk, self.compact_every = eval_chunk, compact_every
        self.critic_layout = ParamLayout.from_module(PolicyMLP(hidden=hidden, out_features=1))

    def config(self) -> dict:
        return {
            "name": self.name,
            "iterations": self.iterations,
            "num_envs": self.num_envs,
            "rollout_steps": self.rollout_steps,
            "ppo_epochs": self.ppo_epochs,
            "minibatches": self.minibatches,
            "lr": self.lr,
            "betas": (0.9, 0.999),
            "gamma": self.gamma,
            "gae_lambda": self.gae_lambda,
            "clip": self.clip,
            "value_coef": self.value_coef,
            "entropy_coef": self.entropy_coef,
            "max_grad_norm": self.max_grad_norm,
            "eval_episodes": self.eval_episodes,
            "eval_seed": self.eval_seed,
            "hidden": self.hidden,
        }

    def init_critic(self, seeds: Sequence[int]) -> torch.Tensor:
        """Fan-in uniform critic parameters ``[R, Pc]``, run r's from ``Generator(seed + 2)``."""
        return torch.cat(
            [
                init_params(self.critic_layout, 1, torch.Generator().manual_seed(int(s) + 2))
                for s in seeds
            ]
        )

    def _gae(
        self,
        values: torch.Tensor,
        next_values: torch.Tensor,
        rewards: torch.Tensor,
        done: torch.Tensor,
    ) -> torch.Tensor:
        """GAE(gamma, lambda) advantages ``[R, T, E]``; ``next_values`` is already zero where an
        episode terminated and the critic's value of the final state where it was truncated."""
        adv = torch.zeros_like(values)
        last = torch.zeros_like(values[:, 0])
        not_done = (~done).to(values.dtype)
        for t in reversed(range(values.shape[1])):
            delta = rewards[:, t] + self.gamma * next_values[:, t] - values[:, t]
            last = delta + self.gamma * self.gae_lambda * not_done[:, t] * last
            adv[:, t] = last
        return adv

    def train_runs(self, theta0: torch.Tensor, seeds: list[int], callback: StepCallback) -> None:
        """PPO for ``len(seeds)`` runs at once from policies ``theta0 [R, P]`` (Sec. 3.3).

        ``callback(0, theta)`` sees the initial policies and ``callback(i, theta)`` the policies
        after i PPO iterations (rollout + update), i = 1..iterations. Run r's randomness comes from
        its own seed: environment resets from ``seed + 1``, the critic from ``seed + 2``, actions
        and minibatch order from ``seed + 3``.
        """
        self.layout.check_flat(theta0)
        if theta0.shape[0] != len(seeds):
            raise ValueError(f"{theta0.shape[0]} parameter vectors for {len(seeds)} seeds")
        runs, envs, steps = len(seeds), self.num_envs, self.rollout_steps
        n = envs * steps
        mb = n // self.minibatches
        device = self.device
        env = CartpoleEnv(
            (runs, envs), [torch.Generator().manual_seed(int(s) + 1) for s in seeds], device=device
        )
        gens = [torch.Generator().manual_seed(int(s) + 3) for s in seeds]
        theta = theta0.detach().to(device).float().clone().requires_grad_(True)
        critic = self.init_critic(seeds).to(device).requires_grad_(True)
        opt = torch.optim.Adam([theta, critic], lr=self.lr, betas=(0.9, 0.999))
        callback(0, theta.detach().clone())
        obs = env.reset()
        for it in range(1, self.iterations + 1):
            # Rollout with the current policy.
            uniforms = torch.stack([torch.rand(steps, envs, generator=g) for g in gens]).to(device)
            obs_buf = torch.empty(runs, steps, envs, 4, device=device)
            final_buf = torch.empty(runs, steps, envs, 4, device=device)
            act_buf = torch.empty(runs, steps, envs, dtype=torch.long, device=device)
            logp_buf = torch.empty(runs, steps, envs, device=device)
            term_buf = torch.empty(runs, steps, envs, dtype=torch.bool, device=device)
            trunc_buf = torch.empty(runs, steps, envs, dtype=torch.bool, device=device)
            with torch.no_grad():
                policy = self.layout.unflatten(theta.detach())
                for t in range(steps):
                    logp_all = F.log_softmax(batched_mlp(policy, obs), -1)
                    action = (uniforms[:, t] < logp_all[..., 1].exp()).long()
                    obs_buf[:, t] = obs
                    act_buf[:, t] = action
                    logp_buf[:, t] = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
                    res = env.step(action)
                    final_buf[:, t], term_buf[:, t], trunc_buf[:, t] = (
                        res.final_obs,
                        res.terminated,
                        res.truncated,
                    )
                    obs = res.obs
                # Critic values of every visited state, the final states and the next obs.
                value_in = torch.cat((obs_buf.flatten(1, 2), final_buf.flatten(1, 2), obs), 1)
                v_all = batched_mlp(self.critic_layout.unflatten(critic.detach()), value_in)
                v_all = v_all.squeeze(-1)
                values = v_all[:, :n].view(runs, steps, envs)
                v_final = v_all[:, n : 2 * n].view(runs, steps, envs)
                v_next = torch.cat((values[:, 1:], v_all[:, 2 * n :].unsqueeze(1)), 1)
                done = term_buf | trunc_buf
                next_values = torch.where(term_buf, 0.0, torch.where(trunc_buf, v_final, v_next))
                rewards = torch.ones(runs, steps, envs, device=device)
                adv = self._gae(values, next_values, rewards, done)
                returns = adv + values
            b_obs, b_act = obs_buf.flatten(1, 2), act_buf.flatten(1, 2)
            b_logp, b_adv, b_ret = logp_buf.flatten(1, 2), adv.flatten(1, 2), returns.flatten(1, 2)
            # PPO update: ppo_epochs passes over the rollout in minibatches, per run.
            for _ in range(self.ppo_epochs):
                order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
                for k in range(self.minibatches):
                    idx = order[:, k * mb : (k + 1) * mb]
                    loss = self._loss(
                        theta,
                        critic,
                        b_obs.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)),
                        b_act.gather(1, idx),
                        b_logp.gather(1, idx),
                        b_adv.gather(1, idx),
                        b_ret.gather(1, idx),
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.sum().backward()
                    if self.max_grad_norm is not None:
                        self._clip_per_run(theta.grad, critic.grad)
                    opt.step()
            callback(it, theta.detach().clone())

    def _loss(
        self,
        theta: torch.Tensor,
        critic: torch.Tensor,
        obs: torch.Tensor,
        act: torch.Tensor,
        old_logp: torch.Tensor,
        adv: torch.Tensor,
        ret: torch.Tensor,
    ) -> torch.Tensor:
        """Per-run PPO loss ``[R]``: clipped surrogate + value_coef * value loss - entropy bonus."""
        logp_all = F.log_softmax(batched_mlp(self.layout.unflatten(theta), obs), -1)
        logp = logp_all.gather(-1, act.unsqueeze(-1)).squeeze(-1)
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
        ratio = (logp - old_logp).exp()
        surrogate = torch.maximum(
            -adv * ratio, -adv * ratio.clamp(1 - self.clip, 1 + self.clip)
        ).mean(1)
        value = batched_mlp(self.critic_layout.unflatten(critic), obs).squeeze(-1)
        value_loss = 0.5 * (value - ret).pow(2).mean(1)
        loss = surrogate + self.value_coef * value_loss
        if self.entropy_coef:
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean(1)
            loss = loss - self.entropy_coef * entropy
        return loss

    def _clip_per_run(self, *grads: torch.Tensor) -> None:
        """Scale each run's gradient (all its rows together) to norm <= ``max_grad_norm``."""
        norm = torch.stack([g.pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0).unsqueeze(1)
        for g in grads:
            g.mul_(scale)

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean undiscounted return of each greedy policy in ``theta [N, P]`` over
        ``eval_episodes`` episodes (at most 500 steps each). Every policy starts from the same
        ``eval_seed`` states, so the metric is deterministic."""
        self.layout.check_flat(theta)
        g = torch.Generator().manual_seed(self.eval_seed)
        start = (torch.rand(self.eval_episodes, 4, generator=g) * 2 - 1) * RESET_BOUND
        start, theta = start.to(self.device), theta.to(self.device).float()
        out = [self._greedy_returns(chunk, start).cpu() for chunk in theta.split(self.eval_chunk)]
        return {"return": torch.cat(out) if out else torch.zeros(0)}

    def _greedy_returns(self, theta: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Mean episode return of each greedy policy ``theta [n, P]`` from the states ``start
        [M, 4]``. Policies whose episodes have all ended are dropped every ``compact_every``
        steps, so a chunk costs what its surviving policies cost."""
        params = self.layout.unflatten(theta)
        device = theta.device
        total = torch.zeros(theta.shape[0], start.shape[0], device=device)
        rows = torch.arange(theta.shape[0], device=device)
        state = start.expand(theta.shape[0], -1, -1).clone()
        alive = torch.ones(state.shape[:2], dtype=torch.bool, device=device)
        ret = torch.zeros(state.shape[:2], device=device)
        for step in range(1, MAX_EPISODE_STEPS + 1):
            action = batched_mlp(params, state).argmax(-1)
            state, terminated = cartpole_dynamics(state, action)
            ret += alive
            alive &= ~terminated
            if step % self.compact_every == 0 or step == MAX_EPISODE_STEPS:
                keep = alive.any(1)
                total[rows[~keep]] = ret[~keep]
                if not keep.any():
                    break
                if not keep.all():
                    rows, state, alive, ret = rows[keep], state[keep], alive[keep], ret[keep]
                    params = {k: v[keep] for k, v in params.items()}
        total[rows] = ret
        return total.mean(1)
