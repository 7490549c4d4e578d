"""Issue 18 analysis: goal-keypoint accuracy of a policy run on reach episodes: per camera, the distance (pixels of
the 64x64 frame) between the goal keypoint (expected position) and the goal's segmentation
centroid, on the episodes a run trained on (first N_TRAIN) and on later (held-out) episodes,
every 4th frame where the goal is seen. Prints per split and camera (frames, median px, mean px).

Usage: python benchmarks/scripts/reach_goal_keypoint_error.py RUN REACH_DATASET N_TRAIN
"""
import sys

import numpy as np
import torch

from robodream.data.lerobot import LeRobotDataset
from robodream.data.lerobot_format import SEGMENTATION_PREFIX
from robodream.envs.shift import SEG_CLASSES
from robodream.policy.train import load_policy

run, data, n_train = sys.argv[1], sys.argv[2], int(sys.argv[3])
policy, tok, _ = load_policy(run)
ds = LeRobotDataset(data)
goal = SEG_CLASSES.index("goal")
cams = policy.cfg.cameras
k = list(policy.cfg.keypoint_targets).index("goal")
res = {"train": {c: [] for c in cams}, "heldout": {c: [] for c in cams}}
with torch.inference_mode():
    for i in range(ds.num_episodes):
        split = "train" if i < n_train else "heldout"
        for c in cams:
            fr = torch.from_numpy(ds.frames(i, c)).permute(0, 3, 1, 2)[::4]  # every 4th frame
            seg = ds.array(i, SEGMENTATION_PREFIX + c)[::4]
            x = fr.float() * (2.0 / 255.0) - 1.0
            _, feats = policy.pixel_stem.forward_with_features(x)
            kp, _ = policy.keypoints.forward_with_log_prob(feats)  # (T, K, 2) in [-1, 1]
            H = seg.shape[-1]
            for t in range(len(seg)):
                ys, xs = np.nonzero(seg[t] == goal)
                if len(xs) == 0:
                    continue
                cx, cy = (xs.mean() + 0.5) / H * 2 - 1, (ys.mean() + 0.5) / H * 2 - 1
                d = np.hypot(float(kp[t, k, 0]) - cx, float(kp[t, k, 1]) - cy) * H / 2
                res[split][c].append(d)
for s, v in res.items():
    print(s, {c: (len(d), round(float(np.median(d)), 2), round(float(np.mean(d)), 2)) for c, d in v.items() if d})
