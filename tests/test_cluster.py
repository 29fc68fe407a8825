"""`segment_files(..., client=)` and `segment --dask` on a LocalCluster of two worker
processes with the tiny model: the same files as in-process, resumable, surviving a lost
worker. Only 127.0.0.1 is ever contacted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_itaclip.batch import BatchProgress, SegmenterSpec, segment_files
from napari_itaclip.bundle import SUFFIX, load_bundle
from napari_itaclip.engine import prepare
from napari_itaclip.io import LABEL_METADATA_KEY, find_images, read_image, stored_shape
from napari_itaclip.label_store import partial_folder
from test_batch import CLASSES, SETTINGS, H, W

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def request_():
    return prepare(CLASSES, **SETTINGS)


@pytest.fixture(scope="module")
def spec(tiny_weights):
    return SegmenterSpec(pretrained=tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cache = tmp_path_factory.mktemp("worker-cache")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        env={"NAPARI_ITACLIP_CACHE": str(cache)},  # never the user's cache
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as client:
        yield client


def random_image(seed: int, shape=(H, W, 3)) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    image[: H // 2] //= 3  # halves that differ in more than noise
    return image


def make_images(folder: Path, n: int = 4) -> list[Path]:
    """n RGB PNGs, a 3-plane TIFF stack, a 3-plane OME-Zarr and a broken PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        Image.fromarray(random_image(i)).save(folder / f"photo{i}.png")
        paths.append(folder / f"photo{i}.png")
    tifffile.imwrite(folder / "stack.tif", random_image(10, (3, H, W)), photometric="minisblack")
    write_ome_zarr(folder / "volume.zarr", random_image(11, (3, 1, H, W)))
    (folder / "broken.png").write_bytes(b"not a PNG")
    return [*paths, folder / "stack.tif", folder / "volume.zarr", folder / "broken.png"]


def write_ome_zarr(path: Path, data: np.ndarray) -> None:
    """An OME-Zarr image: level 0 `data` (Z, C, Y, X), level 1 half its size."""
    group = zarr.open_group(path, mode="w")
    group.attrs["multiscales"] = [
        {"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}], "axes": ["z", "c", "y", "x"]}
    ]
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 1, H, W))[:] = data
    group.create_array("1", shape=(3, 1, H // 2, W // 2), dtype=data.dtype)


def label_arrays(out: Path) -> dict[str, np.ndarray]:
    """Every output's pixels by file name (bundles: their label image)."""
    arrays = {}
    for path in sorted(out.iterdir()):
        if path.name.endswith(SUFFIX):
            arrays[path.name] = load_bundle(path).label_image
        elif path.suffix == ".tif":
            arrays[path.name] = tifffile.imread(path)
        else:
            arrays[path.name] = np.asarray(Image.open(path))
    return arrays


def mtimes(out: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in out.rglob("*")}


# ------------------------------------------------------------------ no cluster needed
def test_ome_zarr_reads_level_0_lazily_less_unit_axes(tmp_path):
    data = random_image(3, (3, 1, H, W))
    write_ome_zarr(tmp_path / "v.zarr", data)
    image = read_image(tmp_path / "v.zarr")
    assert image.shape == stored_shape(tmp_path / "v.zarr") == (3, H, W)
    np.testing.assert_array_equal(image[1], data[1, 0])
    np.testing.assert_array_equal(np.asarray(image), data[:, 0])
    # a folder scan takes the store as one image and does not look inside
    assert [found.path.name for found in find_images([tmp_path])[0]] == ["v.zarr"]


def test_a_zarr_group_without_multiscales_is_refused(tmp_path):
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(ValueError, match="no OME-Zarr multiscale image"):
        read_image(tmp_path / "plain.zarr")


def test_a_zarr_stack_gives_the_result_of_the_same_tiff_stack(tmp_path, segmenter, request_):
    data = random_image(4, (3, 1, H, W))
    write_ome_zarr(tmp_path / "in" / "v.zarr", data)
    tifffile.imwrite(tmp_path / "in" / "t.tif", data[:, 0], photometric="minisblack")
    out = tmp_path / "out"
    report = segment_files(
        [tmp_path / "in" / "v.zarr", tmp_path / "in" / "t.tif"], request_, out, segmenter=segmenter
    )
    assert not report.failed
    zarr_labels = tifffile.imread(out / "v_labels.tif")
    assert zarr_labels.shape == (3, H, W)
    np.testing.assert_array_equal(zarr_labels, tifffile.imread(out / "t_labels.tif"))


def test_nothing_of_dask_is_imported_without_a_client():
    code = (
        "import sys, napari_itaclip.batch, napari_itaclip.cli as cli;"
        "cli.build_parser().parse_args(['segment', 'x', '--classes', 'a', '--dask', 'local:2']);"
        "print(sorted(m for m in ('dask', 'distributed', 'zarr') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_dask_option_refuses_local_without_a_positive_count(capsys):
    from napari_itaclip.cli import EXIT_USAGE, main

    assert main(["segment", "x.png", "--classes", "a", "--dask", "local:0"]) == EXIT_USAGE
    assert "must be a positive integer" in capsys.readouterr().err


def test_an_unreachable_scheduler_is_a_usage_error(tmp_path, capsys):
    import dask

    from napari_itaclip.cli import EXIT_USAGE, main

    Image.fromarray(random_image(0)).save(tmp_path / "a.png")
    argv = ["segment", str(tmp_path / "a.png"), "--classes", "a; b", "--out", str(tmp_path / "o")]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main([*argv, "--dask", "tcp://127.0.0.1:1"]) == EXIT_USAGE
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err


def test_a_loaded_segmenter_cannot_go_to_a_cluster(tmp_path, segmenter, request_):
    with pytest.raises(TypeError, match="SegmenterSpec"):
        segment_files([], request_, tmp_path, segmenter=segmenter, client=object())


# ------------------------------------------------------------------ on the cluster
@pytest.mark.slow
def test_cluster_writes_the_files_and_labels_of_the_in_process_run(
    tmp_path, client, spec, request_
):
    images = make_images(tmp_path / "in")
    local = segment_files(images, request_, tmp_path / "local", segmenter=spec)
    remote = segment_files(images, request_, tmp_path / "dask", segmenter=spec, client=client)

    assert remote.written == local.written == images[:-1]  # in image order
    assert remote.failed == local.failed
    assert list(remote.failed) == [images[-1]] and "cannot decode" in remote.failed[images[-1]]
    expected, got = label_arrays(tmp_path / "local"), label_arrays(tmp_path / "dask")
    assert sorted(got) == sorted(expected)
    assert {"stack_labels.tif", "volume_labels.tif", "volume_overlay.png"} <= set(got)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    stacked = load_bundle(tmp_path / "dask" / f"stack{SUFFIX}")
    assert stacked.parameters["n_planes"] == 3


@pytest.mark.slow
def test_text_features_are_computed_once_for_all_workers(tmp_path, client, spec):
    def count_text_encodings():
        from napari_itaclip.engine import text

        original = getattr(text.template_ensemble, "original", text.template_ensemble)

        def counted(*args, **kwargs):
            counted.calls += 1
            return original(*args, **kwargs)

        counted.calls, counted.original = 0, original
        text.template_ensemble = counted

    def text_encodings():
        from napari_itaclip.engine import text

        return text.template_ensemble.calls

    client.run(count_text_encodings)
    images = [tmp_path / f"p{i}.png" for i in range(6)]
    for i, path in enumerate(images):
        Image.fromarray(random_image(i)).save(path)
    request = prepare("background; a wombat; a quokka", **SETTINGS)  # queries no run has seen
    report = segment_files(images, request, tmp_path / "out", segmenter=spec, client=client)
    assert len(report.written) == 6
    assert sum(client.run(text_encodings).values()) == 1


@pytest.mark.slow
def test_resume_writes_only_what_is_missing(tmp_path, client, spec, request_):
    images = make_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    segment_files(images, request_, out, segmenter=spec, client=client)
    (out / f"photo1{SUFFIX}").unlink()  # an image with part of its outputs
    orphan = out / ".tmp-12345-photo2_labels.png"  # as a worker killed while writing leaves
    orphan.write_bytes(b"partial")
    before = mtimes(out)

    again = segment_files(images, request_, out, segmenter=spec, client=client)

    assert again.written == [images[1]] and list(again.failed) == [images[-1]]
    assert again.skipped == [images[0], images[2], images[3], images[4]]
    after = mtimes(out)
    assert not orphan.exists()
    assert {name: after[name] for name in after if name != f"photo1{SUFFIX}"} == {
        name: before[name] for name in before if name != orphan.name
    }
    assert (out / f"photo1{SUFFIX}").is_file()


@pytest.mark.slow
def test_workers_that_cannot_load_the_model_stop_the_run_before_any_image(
    tmp_path, client, request_
):
    from napari_itaclip.cluster import SetupError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights")
    Image.fromarray(random_image(0)).save(tmp_path / "a.png")
    spec = SegmenterSpec(pretrained=bad, device="cpu")
    with pytest.raises(SetupError, match="the workers could not start"):
        segment_files(
            [tmp_path / "a.png"], request_, tmp_path / "out", segmenter=spec, client=client
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_on_a_running_scheduler_writes_what_the_local_run_writes(
    tmp_path, cluster, client, tiny_weights
):
    from napari_itaclip.cli import EXIT_FAILURES, main

    images = make_images(tmp_path / "in", n=2)
    common = ["--classes", CLASSES, "--pretrained", str(tiny_weights), "--device", "cpu"]
    common += ["--preset", "fast", "--short-side", "64"]
    local = main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "a"), *common])
    remote = main(
        ["segment", str(tmp_path / "in"), "--out", str(tmp_path / "b"), *common]
        + ["--dask", cluster.scheduler_address]
    )
    assert local == remote == EXIT_FAILURES  # the broken image, reported by both
    expected, got = label_arrays(tmp_path / "a"), label_arrays(tmp_path / "b")
    assert sorted(got) == sorted(expected) and len(got) == 3 * len(images[:-1])
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_no_image_and_duplicates_no_output(
    tmp_path, client, spec, request_
):
    images = [tmp_path / "in" / f"p{i:02}.png" for i in range(16)]
    images[0].parent.mkdir()
    for i, path in enumerate(images):
        Image.fromarray(random_image(i)).save(path)
    before = client.run(os.getpid)
    victim = sorted(before)[0]

    class KillAfterFirstImage(BatchProgress):
        killed = False

        def image_done(self):
            if not self.killed:
                self.killed = True
                os.kill(before[victim], signal.SIGKILL)  # as the OOM killer or a lost node

    out = tmp_path / "out"
    report = segment_files(
        images,
        request_,
        out,
        segmenter=spec,
        client=client,
        images_per_task=1,
        progress=KillAfterFirstImage(),
    )
    assert report.written == images and not report.failed and not report.skipped
    names = sorted(path.name for path in out.iterdir())  # hidden temporaries included
    assert names == sorted(
        f"p{i:02}{suffix}" for i in range(16) for suffix in ("_labels.png", "_overlay.png", SUFFIX)
    )
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != set(before.values())  # one was replaced


# ------------------------------------------------------------------ zarr label stores
@contextmanager
def patched_segment(client, fail_on: float | None = None):
    """Every worker's `ITACLIP.segment` counted, and failing on the plane whose mean is
    `fail_on`; yields a function that sums the calls since."""

    def patch(fail_on):
        from napari_itaclip.engine.segmenter import ITACLIP

        original = getattr(ITACLIP.segment, "original", ITACLIP.segment)

        def segment(self, image, request, **kwargs):
            segment.calls += 1
            if fail_on is not None and np.isclose(image.mean(), fail_on):
                raise RuntimeError("out of memory on this plane")
            return original(self, image, request, **kwargs)

        segment.calls, segment.original = 0, original
        ITACLIP.segment = segment

    def calls():
        from napari_itaclip.engine.segmenter import ITACLIP

        return ITACLIP.segment.calls

    def restore():
        from napari_itaclip.engine.segmenter import ITACLIP

        ITACLIP.segment = ITACLIP.segment.original

    client.run(patch, fail_on)
    try:
        yield lambda: sum(client.run(calls).values())
    finally:
        client.run(restore)


@contextmanager
def no_assembly_on_workers(client):
    """Fail any task that assembles a stacked result (a whole stack in one worker)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the stack was assembled")

    def patch():
        from napari_itaclip import batch, cluster

        batch.original_segment_planes = batch.segment_planes
        cluster.OriginalPlaneStack = cluster.PlaneStack
        batch.segment_planes = cluster.PlaneStack = refuse

    def restore():
        from napari_itaclip import batch, cluster

        batch.segment_planes = batch.original_segment_planes
        cluster.PlaneStack = cluster.OriginalPlaneStack

    client.run(patch)
    try:
        yield
    finally:
        client.run(restore)


@pytest.mark.slow
def test_cluster_writes_zarr_stores_of_the_in_process_tiffs_without_assembling(
    tmp_path, client, spec, request_
):
    images = make_images(tmp_path / "in", n=1)  # photo0.png, stack.tif, volume.zarr, broken
    local = segment_files(images, request_, tmp_path / "local", segmenter=spec, formats=["tif"])
    with no_assembly_on_workers(client), distributed.get_task_stream(client) as tasks:
        remote = segment_files(
            images,
            request_,
            tmp_path / "dask",
            segmenter=spec,
            client=client,
            formats=["zarr"],
            images_per_task=1,
        )

    assert remote.written == local.written == images[:-1] and remote.failed == local.failed
    # each plane of the two stacks was a task of its own, which wrote it into the store
    names = [task["key"].split("-", 1)[0] for task in tasks.data]
    assert names.count("write_plane_chunk") == 6 and names.count("finish_stack") == 2
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == sorted(
        f"{stem}{suffix}"
        for stem in ("photo0", "stack", "volume")
        for suffix in ("_labels.zarr", "_overlay.png")
    )
    for stem in ("photo0", "stack", "volume"):
        stored = zarr.open_array(tmp_path / "dask" / f"{stem}_labels.zarr", mode="r")
        expected = tifffile.imread(tmp_path / "local" / f"{stem}_labels.tif")
        np.testing.assert_array_equal(stored[...], expected, err_msg=stem)
        assert stored.attrs[LABEL_METADATA_KEY]["class_names"] == ["background", "cat", "dog"]
        overlay = f"{stem}_overlay.png"
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "dask" / overlay)),
            np.asarray(Image.open(tmp_path / "local" / overlay)),
        )


@pytest.mark.slow
def test_cluster_resumes_a_failed_zarr_store_plane_by_plane(tmp_path, client, spec, request_):
    data = random_image(12, (3, H, W))
    path = tmp_path / "in" / "stack.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, data, photometric="minisblack")
    out = tmp_path / "out"
    store = out / "stack_labels.zarr"
    partial = partial_folder(store)
    run = {"segmenter": spec, "client": client, "formats": ["zarr"], "images_per_task": 1}

    with patched_segment(client, fail_on=data[1].mean()):
        first = segment_files([path], request_, out, **run)
    assert "out of memory on this plane" in first.failed[path]
    assert not store.exists() and partial.is_dir()  # kept, to be resumed
    # Planes 0 and 2 are done: a sentinel planted in 0 must survive. Plane 1 holds data as a
    # worker killed mid-write leaves it (no marker): it must be replaced.
    array = zarr.open_array(partial / "labels.zarr", mode="r+")
    array[0] = 7
    array[1] = 9

    with patched_segment(client) as calls:
        again = segment_files([path], request_, out, **run)
        assert again.written == [path] and calls() == 1

    expected = segment_files([path], request_, tmp_path / "tif", segmenter=spec, formats=["tif"])
    assert expected.written == [path]
    labels, tiff = (
        zarr.open_array(store, mode="r")[...],
        tifffile.imread(tmp_path / "tif" / "stack_labels.tif"),
    )
    assert (labels[0] == 7).all()
    np.testing.assert_array_equal(labels[1:], tiff[1:])
    assert not partial.exists()

    # A finished store is never rewritten; a partial folder left beside it (a writer killed
    # between the final rename and the clean-up) is removed.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    (partial / "planes").mkdir(parents=True)
    with patched_segment(client) as calls:
        finished = segment_files([path], request_, out, **run)
        assert finished.skipped == [path] and calls() == 0
    assert not partial.exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.slow
def test_a_worker_killed_while_writing_planes_leaves_one_complete_store(
    tmp_path, client, spec, request_
):
    """A worker is killed (as by the OOM killer) as soon as the first plane is in the store:
    its plane tasks run on the other worker (or its replacement) and the store is finished
    once, complete, with the labels of the in-process run."""
    import threading
    import time

    path = tmp_path / "in" / "stack.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, random_image(13, (12, H, W)), photometric="minisblack")
    out = tmp_path / "out"
    markers = partial_folder(out / "stack_labels.zarr") / "planes"
    before = client.run(os.getpid)
    killed = threading.Event()

    def kill_after_the_first_plane():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (markers.is_dir() and any(markers.iterdir())):
            time.sleep(0.002)
        os.kill(before[sorted(before)[0]], signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_after_the_first_plane, daemon=True)
    killer.start()
    report = segment_files(
        [path], request_, out, segmenter=spec, client=client, formats=["zarr"], images_per_task=1
    )
    killer.join(timeout=120)

    assert killed.is_set() and report.written == [path] and not report.failed
    assert sorted(p.name for p in out.iterdir()) == ["stack_labels.zarr", "stack_overlay.png"]
    expected = segment_files([path], request_, tmp_path / "tif", segmenter=spec, formats=["tif"])
    assert expected.written == [path]
    np.testing.assert_array_equal(
        zarr.open_array(out / "stack_labels.zarr", mode="r")[...],
        tifffile.imread(tmp_path / "tif" / "stack_labels.tif"),
    )
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != set(before.values())  # one was replaced
