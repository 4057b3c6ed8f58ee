"""Key hold: the NOTE_ON pull toward the key heard so far, and its way through generate()."""

from __future__ import annotations

import pytest
import torch

from model_fixtures import pin_logits, randomize_weights
from perceiver_music.generate import generate
from perceiver_music.key_hold import KeyHold
from perceiver_music.model import PerceiverAR, PerceiverARConfig
from perceiver_music.tokenizer import NOTE_OFF_BASE, NOTE_ON_BASE, TIME_SHIFT_BASE, VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C_MAJOR = (0, 2, 4, 5, 7, 9, 11)


def note_on(pitch: int) -> int:
    return NOTE_ON_BASE + pitch


def scale_prompt(classes=C_MAJOR, octaves=(4, 5), repeats: int = 4) -> list[int]:
    ids = []
    for _ in range(repeats):
        for octave in octaves:
            for pc in classes:
                ids += [note_on(12 * octave + pc), TIME_SHIFT_BASE + 9, NOTE_OFF_BASE + 12 * octave + pc]
    return ids


def note_on_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)[:, NOTE_ON_BASE:NOTE_OFF_BASE]


def test_in_key_pitches_gain_and_the_note_on_total_is_the_models():
    hold = KeyHold([scale_prompt()], strength=1.0)
    logits = torch.randn(1, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    before, after = note_on_probs(logits), note_on_probs(hold.apply(logits))
    assert after.sum().item() == pytest.approx(before.sum().item(), rel=1e-5)  # when a note comes: unchanged
    ratio = after / before
    c4, c_sharp4 = 60, 61
    assert ratio[0, c4] > 1.5 * ratio[0, c_sharp4]
    # every other id keeps its probability
    rest = torch.cat([logits[:, :NOTE_ON_BASE], logits[:, NOTE_OFF_BASE:]], dim=1)
    held = hold.apply(logits)
    assert torch.equal(torch.cat([held[:, :NOTE_ON_BASE], held[:, NOTE_OFF_BASE:]], dim=1), rest)
    assert ratio[0, c_sharp4] > 0  # a floor: no pitch is ever banned


def test_strength_zero_and_an_empty_primer_change_nothing():
    logits = torch.randn(2, VOCAB_SIZE, generator=torch.Generator().manual_seed(1))
    off = KeyHold([scale_prompt(), scale_prompt()], strength=0.0)
    torch.testing.assert_close(off.apply(logits), logits)
    no_notes = KeyHold([[TIME_SHIFT_BASE + 5], []], strength=2.0)
    torch.testing.assert_close(no_notes.apply(logits), logits)  # nothing heard: a uniform profile


def test_the_memory_fades_toward_what_the_continuation_plays():
    hold = KeyHold([scale_prompt(repeats=1)], strength=1.0, half_life=8)
    f_sharp = 66
    logits = torch.zeros(1, VOCAB_SIZE)
    first = note_on_probs(hold.apply(logits))[0, f_sharp].item()
    for _ in range(40):  # the continuation keeps playing F sharp (and time passes between notes)
        hold.update(torch.tensor([note_on(f_sharp)]))
        hold.update(torch.tensor([TIME_SHIFT_BASE + 3]))
    later = note_on_probs(hold.apply(logits))[0, f_sharp].item()
    assert later > 3 * first


def test_rows_keep_their_own_keys():
    e_flat = (3, 5, 7, 8, 10, 0, 2)
    hold = KeyHold([scale_prompt(C_MAJOR), scale_prompt(e_flat)], strength=1.5)
    probs = note_on_probs(hold.apply(torch.zeros(2, VOCAB_SIZE)))
    e4, e_flat4 = 64, 63
    assert probs[0, e4] > probs[0, e_flat4] and probs[1, e_flat4] > probs[1, e4]


def tiny_model() -> PerceiverAR:
    torch.manual_seed(0)
    cfg = PerceiverARConfig(max_context=64, num_latents=16, d_model=32, n_heads=2, cross_heads=2, n_layers=2,
                            dropout=0.0)
    return pin_logits(randomize_weights(PerceiverAR(cfg))).eval()


def pitch_classes(ids: list[int]) -> list[int]:
    return [(t - NOTE_ON_BASE) % 12 for t in ids if NOTE_ON_BASE <= t < NOTE_OFF_BASE]


def test_generate_with_key_hold_stays_in_key_and_is_seeded():
    model = tiny_model()  # random weights: without the hold its pitches are anywhere
    prompt = scale_prompt()
    free = generate(model, prompt, max_new_tokens=400, seed=3, backend="eager", allow_eos=False)[0]
    held = generate(model, prompt, max_new_tokens=400, seed=3, backend="eager", allow_eos=False, key_hold=3.0)[0]
    again = generate(model, prompt, max_new_tokens=400, seed=3, backend="eager", allow_eos=False, key_hold=3.0)[0]
    assert held == again
    in_key = lambda ids: sum(pc in C_MAJOR for pc in pitch_classes(ids)) / max(1, len(pitch_classes(ids)))  # noqa: E731
    assert len(pitch_classes(held)) > 20
    assert in_key(held) > in_key(free) + 0.15


def test_negative_key_hold_is_refused():
    with pytest.raises(ValueError, match="key_hold"):
        generate(tiny_model(), [note_on(60)], max_new_tokens=4, key_hold=-1.0)


def test_the_device_arithmetic_matches_the_host_one():
    """CUDA runs `_apply_on_device` (torch ops); a CPU the numpy one: the same logits."""
    hold = KeyHold([scale_prompt(), scale_prompt((1, 3, 6, 8, 10))], strength=1.3)
    logits = torch.randn(2, VOCAB_SIZE, generator=torch.Generator().manual_seed(2)) * 4
    torch.testing.assert_close(hold._apply_on_device(logits), hold.apply(logits), rtol=1e-5, atol=1e-5)
