import torch

from chat.engine.sampling import SamplingConfig, make_generator, sample_next

LOGITS = torch.tensor([0.1, 2.0, 1.9, -1.0, 0.5])


def test_top_p_zero_is_greedy_not_nan():
    """OpenAI clients send top_p=0 to mean 'deterministic'; it must not empty the distribution."""
    for _ in range(20):
        assert sample_next(LOGITS, SamplingConfig(temperature=1.0, top_p=0.0)) == 1


def test_tiny_top_p_keeps_the_most_likely_token():
    assert {sample_next(LOGITS, SamplingConfig(temperature=1.0, top_p=1e-9)) for _ in range(20)} == {1}


def test_top_k_and_seed():
    config = SamplingConfig(temperature=1.0, top_k=2)
    assert {sample_next(LOGITS, config) for _ in range(50)} <= {1, 2}
    def draws(seed):
        generator = make_generator(seed)
        return [sample_next(LOGITS, SamplingConfig(temperature=1.0), generator=generator) for _ in range(30)]

    assert draws(3) == draws(3)  # 30 draws: equal by chance only if seeding works
    assert len(set(draws(3))) > 1  # and they are samples, not greedy picks


def test_repetition_penalty_demotes_seen_tokens():
    seen = torch.tensor([1])
    assert sample_next(LOGITS, SamplingConfig(temperature=0, repetition_penalty=2.0), seen) == 2
