"""What a user would run instead: the seed notebook's OpenCV pipeline, and the floors our stages are held to."""

from __future__ import annotations

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ingest.frames import sample_indices
from train.augment import IMAGENET_MEAN, IMAGENET_STD


def seed_read_frames(path: str, count: int = 16) -> np.ndarray:
    """The seed's extraction: OpenCV, a CAP_PROP_POS_FRAMES seek before each of `count` evenly spaced frames."""
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        for index in sample_indices(total, count):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = capture.read()
            if ok:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return np.stack(frames)
    finally:
        capture.release()


def seed_resize(frames: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR) for frame in frames])


def decode_floor(path: str, count: int = 16) -> int:
    """Decode every frame up to the last sampled one, in one thread, with no colour conversion."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        last = int(sample_indices(max(stream.frames, 1), count)[-1])
        decoded = 0
        for _ in container.decode(stream):
            decoded += 1
            if decoded > last and stream.frames:
                break
    return decoded


class SeedVideoDataset(Dataset):
    """The seed's Dataset: decodes, resizes and normalises 16 frames in `__getitem__`, every epoch."""

    def __init__(self, paths: list[str], labels: list[int], frames: int = 16, size: int = 224):
        self.paths, self.labels, self.frames, self.size = paths, labels, frames, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip = seed_resize(seed_read_frames(self.paths[index], self.frames), self.size).astype(np.float32) / 255
        clip = (clip - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
        return torch.from_numpy(clip).permute(0, 3, 1, 2), self.labels[index]
