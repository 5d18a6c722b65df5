"""Dreamer 4 causal tokenizer: masked autoencoding of frames into a few tanh-bounded latent tokens.

Encoder, per frame: P patch tokens + L learned latent tokens through the space x time transformer
(causal in time). Space mask: latents read everything, patches read only patches. The latents'
outputs are projected to C channels and squashed by tanh: z (B, T, L, C) in [-1, 1].
Decoder: z projected back to width D, concatenated with P learned per-patch query tokens. Space
mask: queries read queries and latents, latents read only latents. Queries' outputs -> pixels.
Training drops each patch with a per-image probability p ~ U(0, p_max), replacing it by one learned
embedding, and minimises the pixel MSE. The paper adds 0.2 LPIPS; LPIPS needs pretrained VGG/AlexNet
weights that we cannot ship, so reverie trains with MSE alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.world_model.networks import update_mean_frame
from reverie.world_model.transformer import SpaceTimeTransformer


def patchify(img: Tensor, p: int) -> Tensor:
    """(B, T, H, W, 3) -> (B, T, H/p * W/p, p*p*3), patches in raster order."""
    b, t, h, w, c = img.shape
    x = img.reshape(b, t, h // p, p, w // p, p, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, p: int, h: int, w: int) -> Tensor:
    """(B, T, P, p*p*3) -> (B, T, H, W, 3)."""
    b, t = x.shape[:2]
    x = x.reshape(b, t, h // p, w // p, p, p, 3).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h, w, 3)


def block_mask(n_a: int, n_b: int, a_reads_b: bool, b_reads_a: bool) -> Tensor:
    """(n_a + n_b)^2 bool mask over tokens [A | B]: each group reads itself, across only if asked."""
    m = torch.zeros(n_a + n_b, n_a + n_b, dtype=torch.bool)
    m[:n_a, :n_a] = True
    m[n_a:, n_a:] = True
    m[:n_a, n_a:] = a_reads_b
    m[n_a:, :n_a] = b_reads_a
    return m


class Tokenizer(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], patch: int = 8, latents: int = 16,
                 bottleneck: int = 16, dim: int = 128, depth: int = 4, heads: int = 4,
                 kv_heads: int | None = None, time_every: int = 4, softcap: float = 50.0,
                 qk_norm: bool = True, drop_max: float = 0.9, center: bool = True):
        super().__init__()
        h, w, _ = image_shape
        if h % patch or w % patch:
            from reverie.errors import ConfigError
            raise ConfigError(f"image {h}x{w} is not divisible by the tokenizer patch size {patch}; "
                              f"set world_model.tok_patch to a divisor of both")
        self.h, self.w, self.p = h, w, patch
        self.n_patch, self.n_lat, self.c = (h // patch) * (w // patch), latents, bottleneck
        self.drop_max, self.center = drop_max, center
        # running mean image (training frames): inputs are centred by it and the decoder predicts the
        # residual, so training starts from the mean instead of first learning it (a long plateau
        # on scenes whose frames differ only where the arm moves)
        self.register_buffer("pixel_mean", torch.full((h, w, 3), 0.5))
        self.register_buffer("mean_count", torch.zeros(()))
        pd = patch * patch * 3
        std = 1 / math.sqrt(dim)
        # encoder
        self.patch_in = nn.Linear(pd, dim)
        self.patch_pos = nn.Parameter(torch.randn(self.n_patch, dim) * std)
        self.mask_token = nn.Parameter(torch.randn(dim) * std)  # replaces dropped patches
        self.lat_tokens = nn.Parameter(torch.randn(latents, dim) * std)
        kw = dict(heads=heads, kv_heads=kv_heads, time_every=time_every, softcap=softcap, qk_norm=qk_norm)
        self.encoder = SpaceTimeTransformer(dim, depth, **kw)
        self.to_z = nn.Linear(dim, bottleneck)
        # decoder
        self.from_z = nn.Linear(bottleneck, dim)
        self.dec_lat_pos = nn.Parameter(torch.randn(latents, dim) * std)
        self.queries = nn.Parameter(torch.randn(self.n_patch, dim) * std)
        self.decoder = SpaceTimeTransformer(dim, depth, **kw)
        self.patch_out = nn.Linear(dim, pd)
        nn.init.zeros_(self.patch_out.weight)  # start at the mean image
        nn.init.zeros_(self.patch_out.bias)
        # token order [patches | latents]; encoder: latents read all, patches only patches;
        # decoder: queries read queries and latents, latents only latents
        self.register_buffer("enc_mask", block_mask(self.n_patch, latents, False, True), persistent=False)
        self.register_buffer("dec_mask", block_mask(self.n_patch, latents, True, False), persistent=False)

    def encode(self, img: Tensor, drop: Tensor | None = None, segments: Tensor | None = None,
               cache: list | None = None, t0: int = 0, return_cache: bool = False):
        """img (B, T, H, W, 3) in [0, 1]; drop (B, T, P) bool patches to mask -> z (B, T, L, C)
        (and the encoder's KV cache extended by these frames when return_cache: online encoding
        of one frame at a time continues from it)."""
        b, t = img.shape[:2]
        x = self.patch_in(patchify(img - self.pixel_mean, self.p) * 2)  # (B, T, P, D)
        if drop is not None:
            x = torch.where(drop[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.patch_pos
        lat = self.lat_tokens.expand(b, t, -1, -1).to(x.dtype)
        y, cache = self.encoder(torch.cat([x, lat], 2), self.enc_mask, segments, cache, t0)  # (B, T, P + L, D)
        z = torch.tanh(self.to_z(y[:, :, self.n_patch:]))
        return (z, cache) if return_cache else z

    def decode(self, z: Tensor, segments: Tensor | None = None) -> Tensor:
        """z (B, T, L, C) -> images (B, T, H, W, 3), unclamped (about [0, 1])."""
        b, t = z.shape[:2]
        lat = self.from_z(z) + self.dec_lat_pos
        q = self.queries.expand(b, t, -1, -1).to(lat.dtype)
        y, _ = self.decoder(torch.cat([q, lat], 2), self.dec_mask, segments)
        pix = self.patch_out(y[:, :, :self.n_patch])  # (B, T, P, p*p*3) residual, [-1, 1] units
        return unpatchify(pix / 2, self.p, self.h, self.w) + self.pixel_mean

    def sample_drop(self, b: int, t: int, device) -> Tensor:
        """Per image p ~ U(0, drop_max); each patch dropped with probability p -> (B, T, P) bool."""
        p = torch.rand(b, t, 1, device=device) * self.drop_max
        return torch.rand(b, t, self.n_patch, device=device) < p

    def loss(self, img: Tensor, segments: Tensor | None = None, valid: Tensor | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        """Masked-autoencoding MSE on all pixels; img (B, T, H, W, 3) in [0, 1]. valid (B, T) bool: only
        these frames count (padding after an episode's end; causal in time, so it cannot reach them)."""
        b, t = img.shape[:2]
        real = None if valid is None else valid.bool()
        if self.training and self.center:  # running average, then an EMA with horizon 1000 batches
            update_mean_frame(self.pixel_mean, self.mean_count,
                              img.flatten(0, 1) if real is None else img[real])  # (N, H, W, 3)
        drop = self.sample_drop(b, t, img.device) if self.training else None
        rec = self.decode(self.encode(img, drop, segments), segments)
        if real is None:
            mse = F.mse_loss(rec.float(), img.float())
        else:
            per_frame = (rec.float() - img.float()).square().mean((-3, -2, -1))  # (B, T)
            mse = (per_frame * real).sum() / real.sum().clamp(min=1)
        psnr = -10 * math.log10(max(mse.item(), 1e-10))
        return mse, {"tok_mse": mse.item(), "tok_psnr": psnr,
                     "tok_drop": 0.0 if drop is None else drop.float().mean().item()}
