"""Issue 18 analysis: first frames of reach seeds through a policy run's tokenizer
(original | decoded, per camera), upscaled 3x.

Usage: python benchmarks/scripts/reach_marker_recon.py RUN OUT.png 1000003,1000037
"""

import sys

import numpy as np
from PIL import Image

from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.policy.train import load_policy
from robodream.tokenizer.model import decode_latents, encode_frames

run, out, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
policy, tokenizer, _ = load_policy(run, device="cpu")
env = MetaWorldEnv(EnvConfig(task="reach-v3", image_size=policy.cfg.image_size, cameras=policy.cfg.cameras))
rows = []
for s in seeds:
    images = env.reset(s).images  # (n_cam, H, W, 3)
    decoded = (decode_latents(tokenizer, encode_frames(tokenizer, images)).numpy() * 255).round().astype(np.uint8)
    rows.append(np.concatenate([x for pair in zip(images, decoded) for x in pair], 1))
img = np.concatenate(rows, 0)
Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(out)
env.close()
