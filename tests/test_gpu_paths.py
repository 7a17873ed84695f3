"""The CUDA-side speed-ups of patch embedding (issue 12, item 4), tested on the CPU: the batch
size chosen from free GPU memory (with torch.cuda mocked), the prefetching reader, channels-last
conv nets, and CPU outputs unchanged by all of it. No GPU was measured here."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fivewsi.features import extract
from fivewsi.features.encoders.common import TorchImageEncoder
from fivewsi.features.extract import (
    DEFAULT_BATCH_SIZE,
    batch_from_memory,
    choose_batch_size,
    embed_patches,
    prefetch,
    prepare_encoder,
)
from fivewsi.features.registry import create_encoder

CUDA = torch.device("cuda")


@given(free=st.integers(0, 2**40), per=st.floats(1, 2**32), limit=st.integers(1, 4096))
def test_batch_from_memory_fits_and_is_a_power_of_two(free: int, per: float, limit: int) -> None:
    batch = batch_from_memory(free, per, headroom=0.7, limit=limit)
    assert 1 <= batch <= limit and batch & (batch - 1) == 0
    if batch > 1:
        assert batch * per <= free * 0.7
    if batch < limit:  # the next power of two would not fit
        assert 2 * batch * per > free * 0.7 or 2 * batch > limit


def _mock_cuda(monkeypatch: pytest.MonkeyPatch, free: int, peak: int) -> list[str]:
    calls: list[str] = []

    def record(name: str, value: object = None):
        def fn(*args: object, **kwargs: object) -> object:
            calls.append(name)
            return value
        return fn

    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, record(name))
    monkeypatch.setattr(torch.cuda, "mem_get_info", record("mem_get_info", (free, 2 * free)))
    monkeypatch.setattr(torch.cuda, "memory_allocated", record("memory_allocated", 1000))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", record("max", 1000 + peak))
    monkeypatch.setattr(extract, "autocast_context", lambda device: contextlib.nullcontext())
    return calls


class _Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.name, self.dim, self.seen = "count", 3, []

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(patches.shape))
        return patches.float().mean(dim=(1, 2))


def test_batch_size_from_a_probe_of_free_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _mock_cuda(monkeypatch, free=8 * 2**30, peak=8 * 50 * 2**20)  # 50 MiB a patch
    encoder = _Counting()
    assert choose_batch_size(encoder, 224, CUDA, probe=8) == 64  # 0.7 * 8 GiB / 50 MiB = 114
    assert encoder.seen == [(8, 224, 224, 3)]
    assert calls.index("mem_get_info") < calls.index("max")
    _mock_cuda(monkeypatch, free=80 * 2**30, peak=8 * 2**20)
    assert choose_batch_size(_Counting(), 224, CUDA) == 1024  # capped


def test_a_failed_probe_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _mock_cuda(monkeypatch, free=2**30, peak=2**20)

    def oom(*args: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.cuda, "mem_get_info", oom)
    assert choose_batch_size(_Counting(), 224, CUDA) == DEFAULT_BATCH_SIZE


def test_cpu_batch_size_is_the_default_and_probes_nothing() -> None:
    encoder = _Counting()
    assert choose_batch_size(encoder, 224, torch.device("cpu")) == DEFAULT_BATCH_SIZE
    assert encoder.seen == []


def test_prefetch_keeps_order_and_reads_boundedly_ahead() -> None:
    produced: list[int] = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=3)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1  # the one taken, the queue, the one waiting to be put
    assert list(stream) == list(range(1, 20))


def test_prefetch_raises_where_the_item_would_come_and_stops_when_closed() -> None:
    def failing():
        yield 1
        raise OSError("slide read failed")

    stream = prefetch(failing())
    assert next(stream) == 1
    with pytest.raises(OSError, match="slide read failed"):
        next(stream)

    def endless():
        i = 0
        while True:
            i += 1
            yield i

    before = threading.active_count()
    stream = prefetch(endless(), depth=2)
    next(stream)
    stream.close()
    time.sleep(0.3)
    assert threading.active_count() <= before


def _conv_encoder() -> TorchImageEncoder:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )
    return TorchImageEncoder(net, name="conv", dim=4, input_size=32, amp=False)


@torch.no_grad()
def test_channels_last_for_conv_nets_on_cuda_only_and_same_features() -> None:
    patches = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)
    encoder = _conv_encoder()
    plain = encoder(patches)
    assert prepare_encoder(encoder, torch.device("cpu")).channels_last is False
    prepare_encoder(encoder, CUDA)  # the model stays where it is; only its layout changes
    assert encoder.channels_last is True
    weight = encoder.model[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert encoder.preprocess(patches).is_contiguous(memory_format=torch.channels_last)
    assert float((encoder(patches) - plain).abs().max()) <= 1e-5


def test_a_vit_like_model_keeps_its_layout() -> None:
    vit_like = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16, stride=16), torch.nn.Flatten())
    encoder = TorchImageEncoder(vit_like, name="vit", dim=32, input_size=32, amp=False)
    assert prepare_encoder(encoder, CUDA).channels_last is False


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    from fivewsi.synthetic import write_pixel_slide

    return write_pixel_slide(tmp_path_factory.mktemp("gpu") / "s.tif", width=1024, height=768,
                             mpp=0.5, seed=4)


@pytest.mark.parametrize("workers", [0, 2])
def test_reading_ahead_gives_the_same_features(slide: Path, workers: int) -> None:
    encoder = create_encoder("he-handcrafted")
    coords = np.array([[x, y] for y in range(0, 512, 256) for x in range(0, 768, 256)])
    kwargs = dict(size0=256, patch_size=256, encoder=encoder, workers=workers)
    plain = embed_patches(slide, coords, batch_size=4, read_ahead=False, **kwargs)
    ahead = embed_patches(slide, coords, batch_size=4, read_ahead=True, **kwargs)
    auto = embed_patches(slide, coords, batch_size=None, **kwargs)
    np.testing.assert_array_equal(plain, ahead)
    np.testing.assert_array_equal(plain, auto)


def _bench():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_encoder.py"
    spec = importlib.util.spec_from_file_location("bench_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_encoder_on_cpu_reports_patches_per_second(tmp_path: Path) -> None:
    rows = _bench().main(["--encoders", "he-handcrafted", "no-such-encoder", "--sizes", "32",
                          "--batches", "4", "auto", "--threads", "1", "--seconds", "0.05",
                          "--pool", "8", "--slide", str(tmp_path / "none.svs")])
    done = [r for r in rows if "skipped" not in r]
    assert [r["batch"] for r in done] == [4, DEFAULT_BATCH_SIZE]  # auto on a CPU: the default
    assert all(r["median_patches_per_s"] > 0 and "gpu_util_percent" not in r for r in done)
    assert [r["encoder"] for r in rows if "skipped" in r] == ["no-such-encoder"]


def test_gpu_utilisation_from_cuda_events(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing: bool = False) -> None:
            self.at = 0.0

        def record(self) -> None:
            self.at = time.perf_counter()

        def elapsed_time(self, end: FakeEvent) -> float:
            return (end.at - self.at) * 1000.0

    monkeypatch.setattr(bench, "_has_nvml", lambda: False)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)

    def busy(patches: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return patches

    with bench.GpuUtilisation(CUDA) as util:
        util.forward(busy, torch.zeros(1))
        time.sleep(0.05)  # idle: the GPU waits for the host
    assert util.method == "cuda-events"
    assert 30 <= util.percent <= 70
