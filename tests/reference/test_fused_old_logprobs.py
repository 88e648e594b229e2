"""The fused old log-probs (issue 29 item 4) against the independent reference.

With ``Experience.old_logprobs=None`` the update pass takes log pi_theta0 from its own first
forward (no separate no-grad pass) and reports the theta0 entropy H_s the trigger reads
(``entropy_theta0``). On the padded, packed and fused paths its loss, statistics and gradient
must equal the reference's step with the reference's own theta0 log-probs as the old ones, and
the filled old log-probs and H_s must equal the reference's log_softmax(logits / T) values.
"""

from __future__ import annotations

import pytest
import torch

from sfpo_lab.training.stages import UpdatePass
from tests.reference.test_update_reference import (
    ALL_TOGETHER,
    PATHS,
    STAT_KEYS,
    Host,
    assert_grads_equal,
    assert_stats_equal,
    make_batch,
    make_model,
    make_run,
    ref_token_stats,
    reference_pass,
    to_experience,
)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_fused_old_logprobs_equal_the_reference_at_theta0(path, temperature):
    model = make_model()
    batch = make_batch(model)
    with torch.no_grad():
        lp0, ent0 = ref_token_stats(model, batch, temperature)
    m = batch["mask"].bool()
    batch["old"] = lp0 * m  # the reference's step with the theta0 log-probs as the old ones
    run = make_run(PATHS[path], ALL_TOGETHER, temperature=temperature, grad_clip=0.05)
    ((ref, ref_grads),) = reference_pass(run, model, batch)

    exp = to_experience(batch)
    exp.old_logprobs = None
    host = Host(model, run)
    stats = UpdatePass(host)(exp)

    assert_stats_equal(stats, ref, (*STAT_KEYS, "kl"))
    assert_grads_equal(host.opt.steps[0], ref_grads)
    torch.testing.assert_close(exp.old_logprobs[m], lp0[m], rtol=1e-6, atol=1e-6)
    h_s = float((ent0 * m).sum() / m.sum())
    assert stats["entropy_theta0"] == pytest.approx(h_s, rel=1e-6)
    assert stats["ppo_kl"] == pytest.approx(0.0, abs=1e-7)  # ratio 1 at theta0
