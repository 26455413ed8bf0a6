"""The progress printer: PNDM's extra step shown on the asked scale, and long waits that tick."""

from __future__ import annotations

import io

from kitty_coreml.engines.base import ProgressEvent
from kitty_coreml.progress import ProgressPrinter, shown_step
from tests.proc_utils import wait_until


def test_pndm_steps_map_onto_the_steps_asked():
    shown = [shown_step(step, 21, 20) for step in range(1, 22)]
    assert shown[0] == (1, 20) and shown[-1] == (20, 20)
    assert all(total == 20 for _, total in shown)
    assert [step for step, _ in shown] == sorted(step for step, _ in shown)
    assert all(step * 21 <= real * 20 or step == 1 for (step, _), real in zip(shown, range(1, 22), strict=True)), \
        "never ahead of the real progress"
    assert shown_step(42, 42, 20) == (40, 40), "the diffusers worker counts across two images"
    assert shown_step(7, 12, 20) == (7, 12), "other totals (img2img) are shown as they are"
    assert shown_step(3, 21, None) == (3, 21), "dpmpp runs the steps asked"


def test_only_pndm_is_rescaled():
    stream = io.StringIO()
    printer = ProgressPrinter("plain", stream, steps=1, scheduler="dpmpp")
    printer(ProgressEvent("step", step=2, total=2))
    assert stream.getvalue() == "step 2 of 2\n"


def test_bar_shows_the_asked_scale():
    stream = io.StringIO()
    printer = ProgressPrinter("bar", stream, steps=20, scheduler="pndm")
    printer(ProgressEvent("step", step=21, total=21))
    printer.close()
    assert "step 20/20" in stream.getvalue() and "/21" not in stream.getvalue()


def test_a_long_wait_ticks_on_a_terminal_and_ends_with_its_duration():
    stream = io.StringIO()
    printer = ProgressPrinter("bar", stream)
    printer(ProgressEvent("loading", message="starting the diffusers worker"))
    wait_until(lambda: "\r\x1b[Kstarting the diffusers worker … 1 s" in stream.getvalue(), 30, "a tick")
    printer(ProgressEvent("sampling", images=2))
    text = stream.getvalue()
    waited = text[text.rindex("\r\x1b[K"):]
    assert waited.startswith("\r\x1b[Kstarting the diffusers worker (") and waited.endswith(" s)\nsampling 2 image(s)\n")
    before = stream.getvalue()
    printer.close()
    assert stream.getvalue() == before, "the ticker stopped with the wait"


def test_plain_output_does_not_tick():
    stream = io.StringIO()
    printer = ProgressPrinter("plain", stream)
    printer(ProgressEvent("loading", message="loading smoke on all"))
    printer(ProgressEvent("sampling", images=1))
    printer.close()
    assert stream.getvalue() == "loading smoke on all\nsampling 1 image(s)\n"
