"""Cartpole with PPO (thesis Sec. 3.3): the environment's physics, batched training, learning."""

from __future__ import annotations

import math

import pytest
import torch

from gpt_checkpoints.tasks import build_task
from gpt_checkpoints.tasks.base import Task
from gpt_checkpoints.tasks.cartpole import (
    CartpoleEnv,
    CartpoleTask,
    PolicyMLP,
    batched_mlp,
    cartpole_dynamics,
)

P = 4 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2
THETA_LIMIT = 12 * 2 * math.pi / 360
# A hand-tuned linear controller that balances the pole for a whole episode from any reset state.
BALANCE = torch.tensor([0.1, 0.5, 10.0, 2.0])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small ops on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gym_step(state: list[float], action: int) -> list[float]:
    """gymnasium's CartPole-v1 ``step`` (Euler), written out with Python floats."""
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass, polemass_length = masspole + masscart, masspole * length
    x, x_dot, theta, theta_dot = state
    force = force_mag if action == 1 else -force_mag
    costheta, sintheta = math.cos(theta), math.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sintheta) / total_mass
    thetaacc = (gravity * sintheta - costheta * temp) / (
        length * (4.0 / 3.0 - masspole * costheta**2 / total_mass)
    )
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    return [
        x + tau * x_dot,
        x_dot + tau * xacc,
        theta + tau * theta_dot,
        theta_dot + tau * thetaacc,
    ]


def init_runs(task: Task, seeds: list[int]) -> torch.Tensor:
    return torch.cat([task.init(1, torch.Generator().manual_seed(s)) for s in seeds])


def train(task: CartpoleTask, seeds: list[int]) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    task.train_runs(init_runs(task, seeds), seeds, lambda i, th: seen.__setitem__(i, th.clone()))
    return seen


# ----------------------------------------------------------------------------- environment
@pytest.mark.parametrize("action", [0, 1])
def test_one_euler_step_matches_gymnasium(action):
    start = [0.1, -0.3, 0.05, 0.4]
    nxt, terminated = cartpole_dynamics(torch.tensor([start]), torch.tensor([action]))
    torch.testing.assert_close(nxt[0], torch.tensor(gym_step(start, action)))
    assert not terminated.item()

    env = CartpoleEnv((2, 3), torch.Generator().manual_seed(0))
    env.reset()
    env.state = torch.tensor(start).expand(2, 3, 4).clone()
    out = env.step(torch.full((2, 3), action))
    torch.testing.assert_close(out.obs, torch.tensor(gym_step(start, action)).expand(2, 3, 4))
    assert torch.equal(out.reward, torch.ones(2, 3))
    assert not out.terminated.any() and not out.truncated.any()


def test_terminates_past_the_angle_threshold_and_resets():
    # theta moves by tau * theta_dot = +0.002 this step: past 12 degrees from just below it.
    below = [0.0, 0.0, THETA_LIMIT - 0.001, 0.1]
    stays = [0.0, 0.0, THETA_LIMIT - 0.003, 0.1]
    assert gym_step(below, 1)[2] > THETA_LIMIT > gym_step(stays, 1)[2]
    env = CartpoleEnv(2, torch.Generator().manual_seed(0))
    env.reset()
    env.state = torch.tensor([below, stays])
    out = env.step(torch.ones(2, dtype=torch.long))
    assert out.terminated.tolist() == [True, False]
    assert not out.truncated.any()
    assert torch.equal(out.reward, torch.ones(2))
    assert out.final_obs[0, 2] > THETA_LIMIT
    assert out.obs[0].abs().max() <= 0.05  # reset to U(-0.05, 0.05)
    torch.testing.assert_close(out.obs[1], out.final_obs[1])
    assert env.steps.tolist() == [0, 1]
    # The cart position threshold, both sides.
    _, term = cartpole_dynamics(
        torch.tensor([[2.39, 1.0, 0, 0], [-2.39, -1.0, 0, 0]]), out.obs[:, 0]
    )
    assert term.tolist() == [True, True]


def test_truncates_after_500_steps():
    env = CartpoleEnv(16, torch.Generator().manual_seed(0))
    obs = env.reset()
    assert obs.abs().max() <= 0.05
    for t in range(1, 501):
        out = env.step((obs @ BALANCE > 0).long())
        obs = out.obs
        assert not out.terminated.any()
        assert out.truncated.all() == (t == 500), t
    assert env.steps.eq(0).all()
    assert obs.abs().max() <= 0.05


def test_per_row_generators_make_rows_independent():
    def resets(seeds: list[int]) -> torch.Tensor:
        env = CartpoleEnv((len(seeds), 5), [torch.Generator().manual_seed(s) for s in seeds])
        return torch.stack(
            [env.reset()] + [env.step(torch.zeros(len(seeds), 5)).obs for _ in range(80)]
        )

    together, alone = resets([3, 4]), resets([4])
    torch.testing.assert_close(together[:, 1], alone[:, 0])


# ----------------------------------------------------------------------------- networks
def test_policy_network_and_layout():
    task = build_task("cartpole")
    assert task.name == "cartpole" and task.metric_names == ("return",)
    assert task.iterations == 500 and task.layout.num_params == P
    assert isinstance(task, Task) and isinstance(build_task("cartpole"), CartpoleTask)
    assert [n for n, _ in task.network.named_children()] == ["fc1", "fc2", "fc3"]
    assert task.critic_layout.num_params == P - 32 - 1
    theta = task.init(3, torch.Generator().manual_seed(0))
    x = torch.randn(3, 7, 4)
    torch.testing.assert_close(batched_mlp(task.layout.unflatten(theta), x), task.forward(theta, x))
    assert task.forward(theta, x[0]).shape == (3, 7, 2)
    assert PolicyMLP(out_features=1)(x).shape == (3, 7, 1)
    config = task.config()
    assert config["name"] == "cartpole" and config["iterations"] == 500 and config["lr"] == 3e-4


def test_permuting_hidden_units_leaves_the_policy_unchanged():
    task = build_task("cartpole")
    assert task.permutation_groups == (
        (32, (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))),
        (32, (("fc2.weight", 0), ("fc2.bias", 0), ("fc3.weight", 1))),
    )
    g = torch.Generator().manual_seed(0)
    theta = task.init(4, g)
    params = task.layout.unflatten(theta)
    for size, members in task.permutation_groups:
        perm = torch.randperm(size, generator=g)
        for name, axis in members:
            params[name] = params[name].index_select(axis + 1, perm)  # +1: the network axis
    permuted = task.layout.flatten(params)
    assert not torch.allclose(permuted, theta)
    x = torch.randn(20, 4, generator=g)
    torch.testing.assert_close(task.forward(permuted, x), task.forward(theta, x))


# ----------------------------------------------------------------------------- training
def test_batched_runs_follow_their_solo_trajectories():
    task = build_task("cartpole", iterations=3, num_envs=4, rollout_steps=16)
    together, alone = train(task, [3, 4]), train(task, [4])
    assert sorted(together) == [0, 1, 2, 3]
    for i, theta in together.items():
        assert theta.shape == (2, P) and not theta.requires_grad
        torch.testing.assert_close(theta[1:], alone[i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[3], together[0])  # the updates moved the policies
    assert not torch.allclose(together[3][0], alone[3][0])  # and the two runs differ


def test_evaluate_is_deterministic_and_bounded():
    task = build_task("cartpole")
    theta = task.init(5, torch.Generator().manual_seed(0))
    ret = task.evaluate(theta)["return"]
    assert ret.shape == (5,)
    assert ((ret >= 1) & (ret <= 500)).all()
    torch.testing.assert_close(task.evaluate(theta)["return"], ret)
    torch.testing.assert_close(task.evaluate(theta[2:3])["return"], ret[2:3])


def test_ppo_learns_to_balance():
    # Observed (16 seeds, 40 iterations, defaults): initial 9-43, final 152-470 (mean 16 -> 300).
    # Seeds 0, 1 give 10.2 -> 396.9 and 42.8 -> 302.0.
    task = build_task("cartpole", iterations=40)
    seen = train(task, [0, 1])
    before = task.evaluate(seen[0])["return"]
    after = task.evaluate(seen[40])["return"]
    assert (after > 2 * before).all() and (after > 100).all(), (before, after)
