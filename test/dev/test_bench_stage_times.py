"""bench model's stage times: each ``ovseg.*`` label counted once from the profiler's rows.

On CUDA, ``key_averages()`` holds two rows per ``record_function`` label: the host range
(device type CPU, whose device time sums the kernels launched inside it) and the GPU
annotation (device type CUDA, spanning those same kernels). The rows are torch's own
``FunctionEventAvg`` objects, filled as the profiler fills them for one CUDA frame.
"""

from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEventAvg
from torch.profiler import ProfilerActivity, profile, record_function

from ovseg_dev.bench import stage_times_ms


def row(key: str, device_type: DeviceType, cpu_us: float, device_us: float) -> FunctionEventAvg:
    event = FunctionEventAvg()
    event.key, event.count, event.device_type = key, 1, device_type
    event.cpu_time_total, event.device_time_total = cpu_us, device_us
    event.is_user_annotation = True
    return event


def test_a_cuda_frame_counts_each_stage_once():
    rows = [
        row("ovseg.backbone", DeviceType.CPU, 900.0, 4000.0),  # host range: 4 ms of kernels inside it
        row("ovseg.backbone", DeviceType.CUDA, 0.0, 4200.0),  # GPU annotation: the same kernels' span
        row("ovseg.decoder", DeviceType.CPU, 700.0, 3000.0),
        row("ovseg.decoder", DeviceType.CUDA, 0.0, 3100.0),
        row("ovseg.postprocess", DeviceType.CPU, 100.0, 500.0),  # the pipeline's and the model's own
        row("ovseg.postprocess", DeviceType.CPU, 50.0, 250.0),
        row("aten::conv2d", DeviceType.CPU, 300.0, 3500.0),
    ]
    assert stage_times_ms(rows, cuda=True) == {"backbone": 4.0, "decoder": 3.0, "postprocess": 0.75}


def test_a_cpu_frame_uses_host_time():
    rows = [row("ovseg.backbone", DeviceType.CPU, 900.0, 0.0), row("ovseg.decoder", DeviceType.CPU, 700.0, 0.0)]
    assert stage_times_ms(rows, cuda=False) == {"backbone": 0.9, "decoder": 0.7}


def test_real_profiler_rows_on_the_cpu():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("ovseg.backbone"):
            sum(range(100_000))
    stages = stage_times_ms(prof.key_averages(), cuda=False)
    assert set(stages) == {"backbone"} and stages["backbone"] > 0
