"""PyTorch versions of the 3DMM-STN chain and network, for the speed comparisons only.

Written here layer by layer as the PyTorch port (suvojit-0x55aa/3DMMasSTN-Pytorch,
``lib/model.py``) lays them out: channels-first tensors, the model as ``shapeMU +
shapePC @ alpha``, Rodrigues with ``K`` and ``K @ K``, ``R @ X`` on ``[B, 3, N]``,
``torch.nn.functional.grid_sample(align_corners=True)``, the visibility normals by
index assignment (``normals[:, v0] = ...``, the port's; ``accumulate=True`` uses
``index_add_``, a true scatter-add like ours) and the four losses. The grid's y is
flipped as ours (the port samples upside down) so that both sides compute the same
texture and the values can be compared.

torch is imported by the caller (``jax3dmmstn[torch]``); nothing in the package's core
imports this module.
"""

from __future__ import annotations

import math

import numpy as np

LOSS_WEIGHTS = (0.8998, 0.1, 1e-4, 1e-4)  # landmark, prior, siamese, symmetry (the original)


def make_chain(torch, mean, basis, faces, landmark_index, image_size, accumulate=False):
    """The parameter-free chain as a function ``(theta, image, target, visible) -> (loss, parts)``.

    Args:
      torch: the torch module.
      mean: ``[N, 3]``; basis: ``[N, 3, D]``; faces: ``[F, 3]`` 0-based;
      landmark_index: ``[L]``; image_size: (H, W).
      accumulate: sum every corner's normal (ours) instead of the port's assignment.
    Returns:
      ``chain(theta [B, 6 + D], image [B, C, H, W], target [B, L, 2], visible [B, L])``
      returning the total loss and a dict of intermediates (texture ``[B, C, res, res]``,
      mask ``[B, 1, res, res]``, landmarks ``[B, L, 2]``, losses).
    """
    n, _, d = basis.shape
    res = int(round(math.sqrt(n)))
    shape_mu = torch.tensor(np.asarray(mean, np.float32).reshape(-1, 1))  # [3N, 1]
    shape_pc = torch.tensor(np.asarray(basis, np.float32).reshape(3 * n, d))  # [3N, D]
    faces_t = torch.tensor(np.asarray(faces, np.int64))
    v0, v1, v2 = faces_t[:, 0], faces_t[:, 1], faces_t[:, 2]
    idx = torch.tensor(np.asarray(landmark_index, np.int64))
    height, width = image_size
    eye = torch.eye(3)

    def rodrigues(r):  # [B, 3] -> [B, 3, 3]
        angle = torch.sqrt(torch.sum(r**2, 1)).clamp_min(1e-12)
        k = r / angle[:, None]
        zero = torch.zeros_like(k[:, 0])
        big_k = torch.stack(
            [
                torch.stack([zero, -k[:, 2], k[:, 1]], 1),
                torch.stack([k[:, 2], zero, -k[:, 0]], 1),
                torch.stack([-k[:, 1], k[:, 0], zero], 1),
            ],
            1,
        )
        sin_t = torch.sin(angle)[:, None, None]
        cos_t = torch.cos(angle)[:, None, None]
        return eye + big_k * sin_t + (1 - cos_t) * torch.matmul(big_k, big_k)

    def visibility(x_hat):  # [B, 3, N] -> [B, 1, res, res]
        vertices = x_hat.detach().transpose(2, 1)
        e0s = vertices[:, v1] - vertices[:, v0]
        e1s = vertices[:, v2] - vertices[:, v0]
        e2s = vertices[:, v1] - vertices[:, v2]
        e0n = e0s / torch.sqrt(torch.sum(e0s**2, 2)).unsqueeze(-1)
        e1n = e1s / torch.sqrt(torch.sum(e1s**2, 2)).unsqueeze(-1)
        e2n = e2s / torch.sqrt(torch.sum(e2s**2, 2)).unsqueeze(-1)
        a0 = torch.acos(torch.sum(e0n * e1n, 2).clamp(-1, 1))
        a1 = torch.acos(torch.sum(e2n * e0n, 2).clamp(-1, 1))
        a2 = math.pi - (a0 + a1)
        normal = torch.cross(e0s, e2s, dim=2)
        normals = torch.zeros_like(vertices)
        if accumulate:
            for v, a in ((v0, a0), (v1, a1), (v2, a2)):
                normals.index_add_(1, v, normal * a.unsqueeze(-1))
        else:
            normals[:, v0] = normal * a0.unsqueeze(-1)
            normals[:, v1] = normal * a1.unsqueeze(-1)
            normals[:, v2] = normal * a2.unsqueeze(-1)
        visible = (normals[:, :, 2] >= 0).to(x_hat.dtype)
        return visible.reshape(-1, 1, res, res)

    def chain(theta, image, target, visible):
        batch = theta.shape[0]
        r, t, logs, alpha = theta[:, 0:3], theta[:, 3:5], theta[:, 5], theta[:, 6:]
        x = shape_mu + torch.matmul(shape_pc, alpha.t())  # [3N, B]
        x = x.t().reshape(batch, n, 3).transpose(2, 1)  # [B, 3, N]
        x_hat = torch.matmul(rodrigues(r), x)
        y = x_hat[:, 0:2, :]
        s = (99 / 100.0) ** logs
        y = s[:, None, None] * y + t[:, :, None]  # [B, 2, N]
        landmarks = y[:, :, idx].transpose(2, 1)  # [B, L, 2]
        gx = (y[:, 0] - width / 2) / (width / 2)
        gy = -(y[:, 1] - height / 2) / (height / 2)
        grid = torch.stack([gx, gy], -1).reshape(batch, res, res, 2)
        texture = torch.nn.functional.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        mask = visibility(x_hat)
        masked = texture * mask
        landmark = torch.sum(visible[..., None] * (landmarks - target) ** 2)
        prior = torch.sum(alpha**2)
        vis = mask.expand_as(texture)
        count = torch.sum(vis)
        siamese = torch.sum(vis[0::2] * vis[1::2] * (masked[0::2] - masked[1::2]) ** 2) / count
        flipped = torch.flip(masked, (3,))
        symmetry = torch.sum(vis * torch.flip(vis, (3,)) * (masked - flipped) ** 2) / count
        parts = (landmark, prior, siamese, symmetry)
        total = sum(w * p for w, p in zip(LOSS_WEIGHTS, parts))
        return total, dict(
            texture=texture, mask=mask, landmarks=landmarks, losses=torch.stack(parts)
        )

    return chain


VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def make_network(
    torch,
    localiser: str,
    n_theta: int,
    input_size: int = 224,
    localiser_input_size: int = 64,
    space_to_depth: int = 1,
    hidden: int = 256,
):
    """The port's localiser + theta head as a ``torch.nn.Module``: image NCHW -> theta.

    ``vgg16``: the port's ``vgg_dag_face`` (conv3x3 + ReLU blocks, 2x2 max pools, fc6 as a
    7 x 7 convolution, fc7 as 1 x 1, each + ReLU) and its fc8 as a 1 x 1 convolution to
    theta. ``small_cnn``: our ``SmallCNN`` (four stages of two conv3x3 + group norm + ReLU
    and a max pool, a ``hidden``-wide dense layer) on the image resized to
    ``localiser_input_size`` and folded ``space_to_depth`` x ``space_to_depth`` into
    channels as our model does (the synthetic config: 128, 2, 512), then a dense theta head.
    """
    nn = torch.nn
    if localiser == "vgg16":
        layers, channels = [], 3
        for width, count in VGG16_BLOCKS:
            for _ in range(count):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        size = input_size // 32
        layers += [
            nn.Conv2d(512, 4096, size),
            nn.ReLU(inplace=True),
            nn.Conv2d(4096, 4096, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4096, n_theta, 1),
            nn.Flatten(),
        ]
        return nn.Sequential(*layers)
    if localiser == "small_cnn":
        layers = [nn.Upsample(size=(localiser_input_size,) * 2, mode="bilinear")]
        channels = 3
        if space_to_depth > 1:
            layers.append(nn.PixelUnshuffle(space_to_depth))
            channels *= space_to_depth**2
        for width in (16, 32, 64, 128):
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1),
                    nn.GroupNorm(min(8, width), width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        side = localiser_input_size // space_to_depth // 16  # four 2 x 2 pools
        layers += [
            nn.Flatten(),
            nn.Linear(128 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_theta),
        ]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown localiser {localiser!r}")


def make_train_step(torch, network, chain, learning_rate=1e-10, momentum=0.9, weight_decay=5e-4):
    """One SGD-with-momentum step of ``network`` + ``chain`` (the original's optimiser).

    Returns ``step(image NCHW, target [B, L, 2], visible [B, L]) -> loss``.
    """
    optimiser = torch.optim.SGD(
        network.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
    )

    def step(image, target, visible):
        optimiser.zero_grad(set_to_none=True)
        theta = network(image)
        total, _ = chain(theta, image, target, visible)
        total.backward()
        optimiser.step()
        return total.detach()

    return step
