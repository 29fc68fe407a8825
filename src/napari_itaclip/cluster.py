"""`batch.segment_files` on a dask.distributed cluster (given `client=`); imports distributed,
so it loads only when a client is given.

- Each worker loads the model once: `SegmenterPlugin`, registered on every worker (also on
  workers that join later, or restart after a crash), loads the `SegmenterSpec` into the
  worker's shared segmenter cache (`segmenters.SEGMENTERS`) when it is registered.
- The request's text features are computed once, by one task on the cluster (with a worker's
  device and precision, as that worker would compute them), and every task depends on that
  task's result: dask ships it once to each worker, which puts it in its segmenter's text
  cache.
- 2D images go to `segment_batch` in tasks of `images_per_task`; it runs `batch.segment_image`,
  the in-process loop's function, so the worker writes the same files, atomically. A stack is
  split into tasks of planes, then one more task finishes it:
  - for a zarr label store alone (and the overlay), the client makes the partial store (or
    finds it, to resume) and each task writes its planes into it (`write_plane_chunk`): no
    process holds the stack; `finish_stack` gives the store its final name, as in-process;
  - for a label TIFF or a bundle, the tasks return their planes' results
    (`segment_plane_chunk`) and `write_stack` gathers them into `planes.PlaneStack` and
    writes as in-process.
- At most two tasks per worker thread are in flight (a stack's plane tasks too): new ones are
  submitted as old ones finish (`distributed.as_completed`), so a folder of 100k images, or
  a stack of 100k planes, is never 100k futures.
- A worker lost mid-task: the scheduler runs its tasks elsewhere; images it finished are
  complete and skipped, and outputs are replaced atomically, so none is written in part or
  twice (a plane of a zarr store is marked written only after its data). The temporary files
  of a worker killed while writing are removed at the end; partial zarr stores are kept, to
  be resumed, until their store is finished.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import pickle
import re
from contextlib import contextmanager
from dataclasses import astuple, dataclass

import numpy as np
from distributed import Client, LocalCluster, as_completed
from distributed.diagnostics.plugin import WorkerPlugin

from . import label_store
from .batch import (
    ImageJob,
    ImageOutcome,
    SegmenterSpec,
    describe_error,
    finish_streamed,
    missing_outputs,
    open_label_store,
    planned_outputs,
    read_planes,
    segment_image,
    streams,
    write_outputs,
    write_planes,
    zarr_output,
)
from .planes import PlaneStack, plane_request, plane_results

PLUGIN_NAME = "napari-itaclip-segmenter"
# A task that raises (not an image that fails: that is an outcome) is tried this many more
# times; a worker that dies while running a task does not count (dask's allowed-failures).
RETRIES = 2
TASKS_PER_THREAD = 2  # in flight: one running, one waiting on each worker thread
MAX_IMAGES_PER_TASK = 8
# Enough tasks per worker thread that the bar moves steadily and the last tasks end together.
TASKS_PER_THREAD_PER_RUN = 16
LOCAL_PREFIX = "local:"


class SetupError(Exception):
    """The workers could not load the model or check the request; no image was segmented."""


def _load(*spec_fields):
    return SegmenterSpec(*spec_fields).load()


def worker_segmenter(spec: SegmenterSpec):
    """This worker's segmenter of `spec`: loaded once per process (another spec replaces it)."""
    from .segmenters import SEGMENTERS

    return SEGMENTERS.get(astuple(spec), _load)


class SegmenterPlugin(WorkerPlugin):
    """Loads the segmenter on each worker as it is registered (so the first tasks find it and
    a weights problem is raised by `register_plugin`, before any image), off the worker's
    event loop so that it keeps answering the scheduler meanwhile."""

    name = PLUGIN_NAME

    def __init__(self, spec: SegmenterSpec):
        self.spec = spec

    async def setup(self, worker):
        await asyncio.to_thread(worker_segmenter, self.spec)


@dataclass(frozen=True)
class RunSetup:
    """What every task of a run gets: the request and its query features by query."""

    spec: SegmenterSpec
    request: object
    text_features: dict[str, np.ndarray]

    def segmenter(self):
        """This worker's segmenter, its text cache holding the run's query features."""
        segmenter = worker_segmenter(self.spec)
        segmenter.text_cache.prime(self.text_features)
        return segmenter


def prepare_run(spec: SegmenterSpec, request) -> RunSetup:
    """The first task: check the request against the model, compute its text features."""
    segmenter = worker_segmenter(spec)
    if request.examples is not None:  # a bank of another model is refused before any image
        request.examples.class_ids_for(request.class_names, segmenter.image_fingerprint)
    segmenter.text_features(request.class_list, request.aux_texts, request.params.c_def)
    queries = [*request.class_list.queries, *(request.aux_texts or ())]
    cached = {query: segmenter.text_cache.get(query) for query in queries}
    return RunSetup(spec, request, {q: f for q, f in cached.items() if f is not None})


def _portable(outcome: ImageOutcome) -> ImageOutcome:
    """The outcome, its error picklable with its traceback (or as a plain message)."""
    if outcome.error is None:
        return outcome
    from tblib import pickling_support

    try:
        pickling_support.install(outcome.error)
        pickle.dumps(outcome.error)
        return outcome
    except Exception:
        return outcome._replace(error=RuntimeError(describe_error(outcome.error)))


def segment_batch(setup: RunSetup, jobs: list[ImageJob], options: dict) -> list[ImageOutcome]:
    """A task: `batch.segment_image` on each of `jobs`, writing from this worker."""
    return [
        _portable(segment_image(job, setup.request, load_segmenter=setup.segmenter, **options))
        for job in jobs
    ]


def segment_plane_chunk(setup: RunSetup, job: ImageJob, indices: list[tuple[int, ...]]):
    """A task: [(stack index, engine result)] of some planes of a stack."""
    planes = read_planes(job)
    request = plane_request(planes, setup.request)
    return list(plane_results(setup.segmenter(), planes, request, indices))


def write_plane_chunk(setup: RunSetup, job: ImageJob, store, indices: list[tuple[int, ...]]):
    """A task: segment some planes of a stack and write them into its zarr `store`."""
    write_planes(store, read_planes(job), setup.request, setup.segmenter(), indices)
    return len(indices)


def _finish(setup: RunSetup, job: ImageJob, options: dict, write) -> ImageOutcome:
    """The outcome of write(missing outputs, planes) for a stack whose planes are done."""
    try:
        outputs, _ = missing_outputs(job, setup.request, **options)
        if not outputs:  # written by an earlier try of this task
            return ImageOutcome(job.path, "skipped")
        planes = read_planes(job)
        write(outputs, planes)
        return ImageOutcome(job.path, "written", math.prod(planes.stack_shape))
    except Exception as exc:
        return _portable(ImageOutcome(job.path, "failed", error=exc))


def write_stack(setup: RunSetup, job: ImageJob, options: dict, *chunks) -> ImageOutcome:
    """A task: the stacked result of a stack's plane chunks, written as in-process."""

    def write(outputs, planes):
        assembly = PlaneStack(planes, setup.request)
        for index, result in itertools.chain.from_iterable(chunks):
            assembly.add(index, result)
        write_outputs(outputs, assembly.result(), planes, job.path.name, setup.request)

    return _finish(setup, job, options, write)


def finish_stack(setup: RunSetup, job: ImageJob, options: dict, *chunks) -> ImageOutcome:
    """A task, once every plane is in the stack's zarr store: the store's final name and the
    overlay, as in-process."""

    def write(outputs, planes):
        zarr_path = zarr_output(job, options["formats"])
        finish_streamed(outputs, planes, setup.request, zarr_path, setup.segmenter)

    return _finish(setup, job, options, write)


def images_per_task_for(n_images: int, n_threads: int) -> int:
    """Images per task: about TASKS_PER_THREAD_PER_RUN tasks per worker thread, 1 to
    MAX_IMAGES_PER_TASK (a task costs milliseconds; an image, a tenth of a second or more)."""
    per_task = math.ceil(n_images / (max(n_threads, 1) * TASKS_PER_THREAD_PER_RUN))
    return min(max(per_task, 1), MAX_IMAGES_PER_TASK)


def segment_on_cluster(
    client: Client,
    jobs: list[ImageJob],
    request,
    spec: SegmenterSpec,
    reporting,
    options: dict,
    *,
    images_per_task: int | None = None,
) -> None:
    """Segment `jobs` on `client`'s cluster, recording each outcome in `reporting` (a
    `batch.Reporting`) as its task finishes. Raises SetupError when the workers cannot load
    the model or the request does not fit it (before any image)."""
    try:
        client.register_plugin(SegmenterPlugin(spec))
        setup = client.submit(prepare_run, spec, request, pure=False, retries=RETRIES)
        setup.result()
    except Exception as exc:
        raise SetupError(f"the workers could not start: {describe_error(exc)}") from exc
    n_threads = sum(client.nthreads().values())
    per_task = images_per_task or images_per_task_for(len(jobs), n_threads)
    submissions = _submissions(client, setup, jobs, request, reporting, options, per_task)
    in_flight = as_completed()
    tasks_of: dict = {}  # future -> (tasks it stands for, what to do with its result)
    try:
        while True:
            window = TASKS_PER_THREAD * max(sum(client.nthreads().values()), 1)
            while sum(tasks for tasks, _ in tasks_of.values()) < window:
                submission = next(submissions, None)
                if submission is None:
                    break
                future, tasks, finish = submission
                tasks_of[future] = (tasks, finish)
                in_flight.add(future)
            if not tasks_of:
                break
            future = next(in_flight)
            _, finish = tasks_of.pop(future)
            for outcome in finish(future):
                reporting.record(outcome)
    except BaseException:
        client.cancel(list(tasks_of))  # running tasks still finish their current image
        raise
    remove_orphaned_temporaries(jobs, request.n_classes, options)
    _in_image_order(reporting.report, jobs)


def _in_image_order(report, jobs: list[ImageJob]) -> None:
    """Sort the report's lists (filled as tasks finished) in the order the images came in."""
    order = {job.path: position for position, job in enumerate(jobs)}
    report.written.sort(key=order.get)
    report.skipped.sort(key=order.get)
    report.failed = dict(sorted(report.failed.items(), key=lambda item: order[item[0]]))


def _submissions(client, setup, jobs, request, reporting, options, per_task):
    """(future, tasks it stands for, future -> outcomes) per task to submit, in image order;
    images that need no task (complete, or refused) are recorded on the way."""
    batch: list[ImageJob] = []

    def batch_submission(jobs):
        future = client.submit(segment_batch, setup, jobs, options, pure=False, retries=RETRIES)
        return future, 1, lambda done: _outcomes(done, jobs)

    for job in jobs:
        try:
            if job.error is not None:
                raise job.error
            outputs, layout = missing_outputs(job, request, **options)
            stack = () if layout is None else layout.stack_shape
            store = None
            if stack and "zarr" in outputs and streams(outputs):  # made here, written by tasks
                store = open_label_store(
                    outputs["zarr"], layout, request, restart=options["overwrite"]
                )
        except Exception as exc:
            reporting.record(ImageOutcome(job.path, "failed", error=exc))
            continue
        if not outputs:
            reporting.record(ImageOutcome(job.path, "skipped"))
            continue
        reporting.planned(job.path, outputs, layout)
        if store is not None:
            tasks = (write_plane_chunk, (store,), store.missing(), finish_stack)
            yield from _stack_submissions(client, setup, job, options, per_task, *tasks)
        elif stack and not streams(outputs):
            tasks = (segment_plane_chunk, (), layout.indices(), write_stack)
            yield from _stack_submissions(client, setup, job, options, per_task, *tasks)
        else:  # one plane, or a stack's overlay alone (one plane segmented)
            batch.append(job)
            if len(batch) == per_task:
                yield batch_submission(batch)
                batch = []
    if batch:
        yield batch_submission(batch)


def _stack_submissions(client, setup, job, options, per_task, chunk_task, args, indices, last):
    """A stack's tasks: chunk_task(setup, job, *args, plane indices) for its planes, each
    tracked on its own (it stands for no image), then last(setup, job, options, *chunks),
    which finishes the stack once they are done (its outcome is the image's)."""
    chunks = []
    for start in range(0, len(indices), per_task):
        chunk = indices[start : start + per_task]
        future = client.submit(chunk_task, setup, job, *args, chunk, pure=False, retries=RETRIES)
        chunks.append(future)
        yield future, 1, lambda done: []  # a failed chunk fails `last`, which reports it
    future = client.submit(last, setup, job, options, *chunks, pure=False, retries=RETRIES)
    yield future, 1, lambda done: _outcomes(done, [job])


def _outcomes(future, jobs: list[ImageJob]) -> list[ImageOutcome]:
    """A finished task's outcomes; a task that failed as a whole fails each of its images."""
    if future.status == "error":
        error = future.exception()
        return [ImageOutcome(job.path, "failed", error=error) for job in jobs]
    result = future.result()
    return result if isinstance(result, list) else [result]


# `io.replacing` writes NAME through a temporary `.tmp-PID-NAME` next to it.
_TEMPORARY = re.compile(r"\.tmp-\d+-(?P<name>.+)")


def remove_orphaned_temporaries(jobs: list[ImageJob], n_classes: int, options: dict) -> None:
    """Delete the temporary files that a worker killed while writing left for these jobs'
    outputs (once every task has finished, no writer is left), and the partial folders of
    finished zarr stores."""
    expected = {
        path
        for job in jobs
        for stack in (False, True)
        for path in planned_outputs(
            job.stem, options["formats"], n_classes, options["overlay"], stack
        ).values()
    }
    for folder in {path.parent for path in expected}:
        if not folder.is_dir():
            continue
        for entry in folder.glob(".tmp-*"):
            match = _TEMPORARY.fullmatch(entry.name)
            if match and entry.with_name(match["name"]) in expected:
                entry.unlink(missing_ok=True)
    for path in expected:  # a partial zarr store is kept for a later run to resume
        if path.name.endswith(label_store.SUFFIX):
            label_store.remove_leftover_partial(path)


@contextmanager
def dask_client(address: str):
    """A `Client` of a new `LocalCluster` for "local:N" (N worker processes of one thread:
    torch holds the GIL), or of the running scheduler at `address` (e.g. tcp://HOST:8786)."""
    n_workers = local_workers(address)
    if n_workers is not None:
        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(address)  # gives up after distributed.comm.timeouts.connect (30 s)
    except OSError as exc:
        raise SetupError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    with client:
        yield client


def local_workers(address: str) -> int | None:
    """N of "local:N", or None for a scheduler address; ValueError for a bad "local:"."""
    if not address.startswith(LOCAL_PREFIX):
        return None
    text = address[len(LOCAL_PREFIX) :]
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--dask {address}: local:N needs a positive number of workers")
    return int(text)
