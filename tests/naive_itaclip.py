"""A deliberately naive, literal ITACLIP inference: the test oracle for the engine.

Written only from docs/method.md (section numbers below refer to it), independently of
the engine in `napari_itaclip.engine`. Everything runs one image, one crop, one view and one
query at a time, in fp32 on the CPU, with the most direct torch / OpenCV / torchvision calls.
It is slow on purpose; use it with tiny models and tiny images only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

# docs/method.md §1.3: CLIP's normalisation constants on the 0-255 scale.
MEAN = (122.771, 116.746, 104.094)
STD = (68.501, 66.632, 70.323)

# docs/method.md §2.3: CSA maps are taken before these blocks run (0-based indices).
MID_BLOCKS = (6, 7, 9)


@dataclass(frozen=True)
class Params:
    short_side: int
    logit_scale: float
    c_img: float
    c_def: float
    prob_thd: float
    area_thd: float | None
    background: bool
    max_long_side: int = 2048
    crop: int = 224
    stride: int = 28
    image_engineering: bool = True
    pamr_steps: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    closing: bool = True


# docs/method.md §8 (the five paper presets), typed in from the table.
PAPER_PARAMS = {
    "voc21": Params(336, 60, 0.7, 0.05, 0.1, 0.1, True),
    "context60": Params(336, 55, 0.75, 0.15, 0.1, None, True),
    "coco_object": Params(336, 50, 0.75, 0.1, 0.1, None, True),
    "coco_stuff": Params(448, 40, 0.75, 0.2, 0.0, None, False),
    "cityscapes": Params(560, 40, 0.7, 0.05, 0.0, None, False),
}
# The engine's own faster mode, not the paper's (docs/method.md §9.9); values as documented in the
# engine's presets table: one view, stride 112, 5 PAMR steps, no background, no thresholds.
PAPER_PARAMS["fast"] = Params(
    336, 50, 0.75, 0.1, 0.0, None, False, stride=112, image_engineering=False, pamr_steps=5
)


def params_for(preset: str, **overrides) -> Params:
    return replace(PAPER_PARAMS[preset], **overrides)


# ---------------------------------------------------------------------------------------------
# docs/method.md §3.1, §3.4: class lists and auxiliary texts
# ---------------------------------------------------------------------------------------------


def parse_classes(lines: list[str]) -> list[list[str]]:
    """One class per line; ", " separates the names (queries) of a class."""
    return [line.split(", ") for line in lines]


def parse_aux(text: str, classes: list[list[str]], background: bool) -> list[str]:
    """The aux text of each non-background class, in class order (one `name >=text` line each)."""
    lines = [line for line in text.splitlines() if line.strip()]
    owners = classes[1:] if background else classes
    assert len(lines) == len(owners), "one aux line per non-background class"
    texts = []
    for line, names in zip(lines, owners, strict=True):
        name, text = line.split(">=", 1)
        assert name.strip() in names, f"aux line {line!r} does not match class {names}"
        texts.append(text.strip())
    return texts


# ---------------------------------------------------------------------------------------------
# docs/method.md §1: input
# ---------------------------------------------------------------------------------------------


def resize_uint8(rgb: np.ndarray, short_side: int, max_long_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    sf = min(max_long_side / max(h, w), short_side / min(h, w))
    new_size = (int(w * sf + 0.5), int(h * sf + 0.5))
    return cv2.resize(rgb, new_size, interpolation=cv2.INTER_LINEAR)


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised."""
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


class NaiveITACLIP:
    def __init__(self, model):
        self.model = model.eval()
        self.visual = model.visual
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer()
        self.templates = open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES
        assert len(self.templates) == 80
        self._text_features: dict[str, torch.Tensor] = {}  # memo only: same text, same feature

    # -----------------------------------------------------------------------------------------
    # docs/method.md §3: text features
    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_feature(self, text: str) -> torch.Tensor:
        if text not in self._text_features:
            self._text_features[text] = self._encode_text(text)
        return self._text_features[text]

    @torch.no_grad()
    def _encode_text(self, text: str) -> torch.Tensor:
        prompts = [template(text) for template in self.templates]
        tokens = self.tokenizer(prompts)
        assert tokens.shape == (80, 77)
        features = self.model.encode_text(tokens).float()
        features = features / features.norm(dim=-1, keepdim=True)
        mean = features.mean(dim=0)
        return mean / mean.norm()

    def query_features(self, classes, background: bool, aux_texts, c_def: float):
        """(Q, D) query features and the class index of each query."""
        features = []
        query_class = []
        for class_index, names in enumerate(classes):
            aux_feature = None
            if aux_texts is not None and not (background and class_index == 0):
                aux_index = class_index - 1 if background else class_index
                aux_feature = self.text_feature(aux_texts[aux_index])
            for name in names:
                f_name = self.text_feature(name)
                if aux_feature is not None:
                    f_name = (1 - c_def) * f_name + c_def * aux_feature
                features.append(f_name)
                query_class.append(class_index)
        return torch.stack(features), query_class

    # -----------------------------------------------------------------------------------------
    # docs/method.md §2: encoder
    # -----------------------------------------------------------------------------------------

    def positional_embedding(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.visual.positional_embedding  # (1 + 14*14, width)
        if gh * gw == pos.shape[0] - 1:
            return pos
        n = int(round((pos.shape[0] - 1) ** 0.5))
        cls_pos = pos[:1]
        grid = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid,
            scale_factor=((gh + 0.1) / n, (gw + 0.1) / n),
            mode="bicubic",
            align_corners=False,
        )
        assert grid.shape[-2:] == (gh, gw), (grid.shape, gh, gw)
        grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([cls_pos, grid], dim=0)

    @staticmethod
    def qkv(block, x: torch.Tensor):
        """q, k, v (each (N, width)) = in_proj(ln_1(x)) for a (N, width) token sequence."""
        y = block.ln_1(x)
        qkv = y @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
        width = x.shape[-1]
        return qkv[:, :width], qkv[:, width : 2 * width], qkv[:, 2 * width :]

    def csa(self, block, x: torch.Tensor) -> torch.Tensor:
        """(heads, N, N): softmax(q q^T s) + softmax(k k^T s) per head."""
        q, k, _ = self.qkv(block, x)
        heads = block.attn.num_heads
        head_dim = x.shape[-1] // heads
        s = head_dim**-0.5
        maps = []
        for h in range(heads):
            qh = q[:, h * head_dim : (h + 1) * head_dim]
            kh = k[:, h * head_dim : (h + 1) * head_dim]
            maps.append(torch.softmax(qh @ qh.T * s, dim=-1) + torch.softmax(kh @ kh.T * s, dim=-1))
        return torch.stack(maps)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(3, h, w) normalised image -> (h//16, w//16, D) patch features (no CLS)."""
        v = self.visual
        x = v.conv1(image[None])[0]  # (width, gh, gw)
        width, gh, gw = x.shape
        x = x.reshape(width, gh * gw).T  # row-major tokens
        x = torch.cat([v.class_embedding.reshape(1, width), x], dim=0)
        x = x + self.positional_embedding(gh, gw)
        x = v.ln_pre(x)

        blocks = list(v.transformer.resblocks)
        maps = []
        for i, block in enumerate(blocks[:-1]):
            if i in MID_BLOCKS:
                maps.append(self.csa(block, x))
            x = block(x[None])[0]
        a_mid = (maps[0] + maps[1] + maps[2]) / 3

        last = blocks[-1]
        a = 0.5 * self.csa(last, x) + 0.5 * a_mid
        _, _, val = self.qkv(last, x)
        heads = last.attn.num_heads
        head_dim = width // heads
        outs = []
        for h in range(heads):
            outs.append(a[h] @ val[:, h * head_dim : (h + 1) * head_dim])
        out = torch.cat(outs, dim=-1)
        out = out @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        x = x + out

        x = v.ln_post(x) @ v.proj
        return x[1:].reshape(gh, gw, -1)

    # -----------------------------------------------------------------------------------------
    # docs/method.md §4: image engineering
    # -----------------------------------------------------------------------------------------

    def view_logits(self, crop: torch.Tensor, feature: torch.Tensor, text: torch.Tensor):
        """(gh, gw, D) feature -> (Q, h, w) logits upsampled to the crop size."""
        logits = feature @ text.T  # (gh, gw, Q)
        logits = logits.permute(2, 0, 1)[None]
        return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]

    @staticmethod
    def l2(feature: torch.Tensor) -> torch.Tensor:
        return feature / feature.norm(dim=-1, keepdim=True)

    def crop_logits(self, crop: torch.Tensor, text: torch.Tensor, p: Params) -> torch.Tensor:
        original = self.l2(self.encode(crop))
        if not p.image_engineering:
            return self.view_logits(crop, original, text)
        grey = TF.rgb_to_grayscale(crop, num_output_channels=3)
        blur = TF.gaussian_blur(crop, [11, 11], [5.0, 5.0])
        grey_f = self.l2(self.encode(grey))
        blur_f = self.l2(self.encode(blur))
        feature = (original + grey_f + blur_f) / 3
        logits = self.view_logits(crop, feature, text)

        vflip = self.l2(self.encode(crop.flip(-2)))
        vflip_back = self.view_logits(crop, vflip, text).flip(-2)
        hflip = self.l2(self.encode(crop.flip(-1)))
        hflip_back = self.view_logits(crop, hflip, text).flip(-1)
        flip = (vflip_back + hflip_back) / 2
        return p.c_img * logits + (1 - p.c_img) * flip

    # -----------------------------------------------------------------------------------------
    # docs/method.md §5: sliding window
    # -----------------------------------------------------------------------------------------

    def window_logits(self, image: torch.Tensor, text: torch.Tensor, p: Params) -> torch.Tensor:
        """(Q, h, w) count-averaged window logits at the resized size."""
        _, height, width = image.shape
        crop, stride = p.crop, p.stride
        grids_y = max(height - crop + stride - 1, 0) // stride + 1
        grids_x = max(width - crop + stride - 1, 0) // stride + 1
        canvas = torch.zeros(text.shape[0], height, width)
        count = torch.zeros(1, height, width)
        for iy in range(grids_y):
            for ix in range(grids_x):
                y1 = iy * stride
                x1 = ix * stride
                y2 = min(y1 + crop, height)
                x2 = min(x1 + crop, width)
                y1 = max(y2 - crop, 0)
                x1 = max(x2 - crop, 0)
                window = image[:, y1:y2, x1:x2]
                canvas[:, y1:y2, x1:x2] += self.crop_logits(window, text, p)
                count[:, y1:y2, x1:x2] += 1
        assert (count > 0).all()
        return canvas / count

    # -----------------------------------------------------------------------------------------
    # docs/method.md §6: PAMR
    # -----------------------------------------------------------------------------------------

    @staticmethod
    def shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """out[..., i, j] = t[..., clamp(i + dy), clamp(j + dx)] (replicate padding)."""
        height, width = t.shape[-2:]
        rows = (torch.arange(height) + dy).clamp(0, height - 1)
        cols = (torch.arange(width) + dx).clamp(0, width - 1)
        return t[..., rows, :][..., :, cols]

    def pamr(self, image: torch.Tensor, logits: torch.Tensor, p: Params) -> torch.Tensor:
        offsets = []  # the 16 neighbours (centre excluded)
        samples = []  # the 18 samples of the local std (centre included at each dilation)
        for d in p.pamr_dilations:
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    samples.append(self.shift(image, dy * d, dx * d))
                    if (dy, dx) != (0, 0):
                        offsets.append((dy * d, dx * d))
        std = torch.stack(samples).std(dim=0, unbiased=True)  # (3, H, W)
        affinities = []
        for dy, dx in offsets:
            a = -(image - self.shift(image, dy, dx)).abs() / (1e-8 + 0.1 * std)
            affinities.append(a.mean(dim=0))  # mean over the 3 image channels
        affinity = torch.softmax(torch.stack(affinities), dim=0)  # (16, H, W)
        for _ in range(p.pamr_steps):
            new = torch.zeros_like(logits)
            for n, (dy, dx) in enumerate(offsets):
                new = new + affinity[n][None] * self.shift(logits, dy, dx)
            logits = new
        return logits

    # -----------------------------------------------------------------------------------------
    # Whole pipeline
    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, image: np.ndarray, classes: list[str], p: Params, aux_text: str | None = None):
        """(Q, H, W) query logits at the original size (after PAMR) and the query -> class map."""
        rgb = image
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
        rgb = np.ascontiguousarray(rgb)
        h0, w0 = rgb.shape[:2]

        parsed = parse_classes(classes)
        aux_texts = parse_aux(aux_text, parsed, p.background) if aux_text is not None else None
        text, query_class = self.query_features(parsed, p.background, aux_texts, p.c_def)

        resized = normalise(resize_uint8(rgb, p.short_side, p.max_long_side))
        logits = self.window_logits(resized, text, p)
        logits = F.interpolate(logits[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        if p.pamr_steps > 0:
            small = F.interpolate(
                resized[None], size=(h0, w0), mode="bilinear", align_corners=False
            )
            logits = self.pamr(small[0], logits, p)
        return logits, query_class

    def segment(
        self, image: np.ndarray, classes: list[str], p: Params, aux_text: str | None = None
    ):
        """labels (H, W) uint8 and class probabilities (C, H, W) float32, as numpy."""
        logits, query_class = self.logits(image, classes, p, aux_text)
        return postprocess(logits, query_class, p)


# ---------------------------------------------------------------------------------------------
# docs/method.md §7: postprocessing
# ---------------------------------------------------------------------------------------------


def postprocess(logits: torch.Tensor, query_class: list[int], p: Params):
    n_classes = max(query_class) + 1
    probs = torch.softmax(p.logit_scale * logits, dim=0)  # (Q, H, W)
    one_hot = F.one_hot(torch.tensor(query_class), n_classes).to(probs.dtype)  # (Q, C)
    class_probs = (probs[None] * one_hot.T[:, :, None, None]).max(dim=1).values  # (C, H, W)

    if p.area_thd is not None:
        argmax = class_probs.argmax(dim=0)
        counts = [int((argmax == c).sum()) for c in range(n_classes)]
        foreground = list(range(1, n_classes)) if p.background else list(range(n_classes))
        total = sum(counts[c] for c in foreground)
        for c in foreground:
            if not counts[c] > p.area_thd * total:
                class_probs[c] = 0

    labels = class_probs.argmax(dim=0)
    labels[class_probs.max(dim=0).values < p.prob_thd] = 0
    labels = labels.numpy().astype(np.uint8)
    if p.closing:
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        labels = cv2.morphologyEx(labels, cv2.MORPH_CLOSE, kernel)
    return labels, class_probs.numpy().astype(np.float32)
