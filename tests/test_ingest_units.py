"""Footage building blocks: decoding, detection, tracking, crop selection."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reid_engine.errors import UnknownNameError, WeightsError
from reid_engine.ingest.detect import Detections, create_detector, decode_ssd
from reid_engine.ingest.select import BestCrops, Candidate, cut, quality
from reid_engine.ingest.track import create_tracker, height_scaled_distance
from reid_engine.ingest.video import FrameReader, iter_frames, probe

GT_SCALE = 0.625


@pytest.fixture(scope="module")
def pets_video(shared: Path) -> Path:
    p = shared / "videos" / "pets09_s2l1_view1_480x360.avi"
    if not p.is_file():
        pytest.skip("PETS video not available")
    return p


@pytest.fixture(scope="module")
def detector(shared: Path):
    if not (shared / "weights" / "intel" / "pedestrian-detection-adas-0002").is_dir():
        pytest.skip("pedestrian detector weights not available")
    return create_detector()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_detector_finds_the_annotated_people_on_a_real_frame(pets_video: Path, detector, shared: Path) -> None:
    frame = next(iter_frames(pets_video))[1]
    dets = detector.detect(frame)
    assert len(dets) >= 3
    b = dets.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 480).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 360).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    heights = b[:, 3] - b[:, 1]
    assert ((heights > 25) & (heights < 200)).all()
    assert (dets.scores >= detector.threshold).all()
    # ground truth of video frame 0 is annotated as frame 1, in 768x576 coordinates
    gt = []
    for line in (shared / "data" / "pets09_s2l1" / "gt" / "gt_every3rd.txt").read_text().splitlines():
        f, _, x, y, w, h, flag = line.split(",")[:7]
        if int(f) == 1 and int(flag) == 1:
            gt.append(np.array([float(x), float(y), float(x) + float(w), float(y) + float(h)]) * GT_SCALE)
    found = (_iou(np.array(gt), b) >= 0.5).any(axis=1)
    assert found.sum() >= 0.6 * len(gt), f"only {found.sum()} of {len(gt)} people found"


def test_ssd_output_decoding_stops_at_the_end_marker_and_thresholds() -> None:
    rows = np.array([
        [0, 1, 0.9, 0.1, 0.2, 0.3, 0.8],
        [0, 1, 0.2, 0.5, 0.5, 0.6, 0.9],  # below threshold
        [0, 1, 0.8, 0.5, 0.1, 1.3, 0.9],  # clipped to the frame
        [-1, 0, 0.99, 0, 0, 1, 1],  # end marker: nothing after it counts
        [0, 1, 0.99, 0.0, 0.0, 0.5, 0.5],
    ], np.float32).reshape(1, 1, -1, 7)
    dets = decode_ssd(rows, width=200, height=100, threshold=0.5)
    np.testing.assert_allclose(dets.boxes, [[20, 20, 60, 80], [100, 10, 200, 90]], atol=1e-4)
    np.testing.assert_allclose(dets.scores, [0.9, 0.8])


def test_onnx_detector_runs_a_users_ssd_model(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    out = np.array([[0, 1, 0.95, 0.25, 0.25, 0.5, 0.75], [-1, 0, 0, 0, 0, 0, 0]], np.float32).reshape(1, 1, 2, 7)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["const", "z"], ["detection_out"]),
        ],
        "fake_ssd",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 48])],
        [helper.make_tensor_value_info("detection_out", TensorProto.FLOAT, [1, 1, 2, 7])],
        [helper.make_tensor("const", TensorProto.FLOAT, out.shape, out.ravel()),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "fake_ssd.onnx"
    onnx.save(model, str(path))
    det = create_detector(weights=path, threshold=0.5)
    assert det.name == "onnx-ssd" and (det.height, det.width) == (32, 48)
    dets = det.detect(np.zeros((100, 200, 3), np.uint8))
    np.testing.assert_allclose(dets.boxes, [[50, 25, 100, 75]], atol=1e-4)


def test_detector_registry_names_and_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="openvino-ssd"):
        create_detector("yolo-nonexistent")
    with pytest.raises(WeightsError, match="no such file, expected a weights file for detector"):
        create_detector("openvino-ssd", tmp_path / "missing.xml")
    with pytest.raises(WeightsError, match="cannot tell"):
        create_detector(weights=tmp_path / "model.pt")


def _moving_boxes(n: int, step: float, gap: range = range(0)) -> list[Detections]:
    """Two people walking towards each other on parallel paths; A is missed during ``gap``."""
    frames = []
    for t in range(n):
        ax = 20 + step * t
        bx = 400 - step * t
        boxes = [[bx, 150, bx + 30, 230]]
        if t not in gap:
            boxes.insert(0, [ax, 100, ax + 30, 180])
        frames.append(Detections(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32)))
    return frames


@pytest.mark.parametrize("fps,step", [(10.0, 4.0), (10.0 / 3, 12.0)])
def test_tracker_keeps_ids_on_moving_boxes_through_a_missed_detection(fps: float, step: float) -> None:
    tracker = create_tracker("norfair", fps=fps)
    ids_a, ids_b = [], []
    for t, dets in enumerate(_moving_boxes(30, step, gap=range(12, 14))):
        for tb in tracker.update(dets):
            (ids_a if tb.box[1] == 100 else ids_b).append(tb.track_id)
    assert len(ids_a) >= 20 and len(ids_b) >= 20
    assert len(set(ids_a)) == 1 and len(set(ids_b)) == 1
    assert ids_a[0] != ids_b[0]


def test_tracker_forgets_tracks_after_max_age() -> None:
    tracker = create_tracker("norfair", fps=10.0, max_age=0.5)
    dets = _moving_boxes(5, 4.0)
    for d in dets:
        tracker.update(d)
    assert len(tracker.alive_ids()) == 2
    for _ in range(10):
        tracker.update(Detections.empty())
    assert tracker.alive_ids() == set()


def test_height_scaled_distance_is_zero_on_itself_and_scales_with_size() -> None:
    a = np.array([[0, 0, 10, 20], [0, 0, 100, 200]], np.float64)
    d = height_scaled_distance(a + np.array([2, 0, 2, 0]), a)
    assert d[0, 0] == pytest.approx(0.1) and d[1, 1] == pytest.approx(0.01)
    assert height_scaled_distance(a, a).diagonal() == pytest.approx([0, 0])


def test_best_crops_keeps_the_best_few_spread_in_time() -> None:
    keep = BestCrops(k=2, min_gap=3)
    img = np.zeros((4, 4, 3), np.uint8)
    for frame, q in [(0, 0.5), (1, 0.9), (2, 0.4), (10, 0.6), (20, 0.7)]:
        keep.offer(Candidate(q, frame, np.zeros(4), 1.0, img))
    assert [c.frame for c in keep.best()] == [1, 20]


def test_crop_quality_prefers_sharp_large_confident_whole_people() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
    box = np.array([100, 100, 140, 200], np.float32)
    crop = cut(frame, box)
    assert crop.shape == (100, 40, 3)
    q = quality(crop, box, 0.9, frame.shape)
    assert q > quality(crop, box, 0.5, frame.shape)
    blurred = np.full_like(crop, 128)
    assert q > quality(blurred, box, 0.9, frame.shape)
    edge = np.array([0, 100, 40, 200], np.float32)
    assert quality(crop, edge, 0.9, frame.shape) == pytest.approx(q / 2)


def test_frames_by_number_match_sequential_decoding(pets_video: Path) -> None:
    info = probe(pets_video)
    assert info.frame_count == 795 and (info.width, info.height) == (480, 360) and info.fps > 0
    seq = {f: img for f, img in iter_frames(pets_video, start=30, end=46, every=5)}
    assert sorted(seq) == [30, 35, 40, 45]
    with FrameReader() as reader:
        for f in (40, 35, 45):  # backwards too
            assert np.array_equal(reader.read(str(pets_video), f), seq[f])
        assert reader.read(str(pets_video), 10_000) is None
