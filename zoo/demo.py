"""``mmzoo demo``: build a small registered model and run it on an image and a question, printing what it computed."""

from __future__ import annotations

import time

__all__ = ["draw_scene", "run_demo"]


def draw_scene(size: int = 224):
    """A deterministic picture: a red circle and a blue square on a light background."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    img = Image.new("RGB", (size, size), (235, 235, 225))
    d = ImageDraw.Draw(img)
    s = size
    d.ellipse([s * 0.1, s * 0.15, s * 0.45, s * 0.5], fill=(220, 30, 30))
    d.rectangle([s * 0.55, s * 0.5, s * 0.9, s * 0.85], fill=(30, 60, 210))
    return img


def run_demo(model_name: str = "demo-tiny", question: str = "what colour is the circle?", image: str | None = None,
             overrides=()) -> dict:
    import torch  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    from zoo.modules.attention import select_backend  # noqa: PLC0415

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = zoo.create_model(model_name, overrides=overrides).eval()
    build_s = time.perf_counter() - t0
    res = model.zoo_config.get("default_resolution") or 224
    if image is None:
        pil, source = draw_scene(res), f"drawn scene ({res}×{res}: red circle, blue square)"
    else:
        from PIL import Image  # noqa: PLC0415

        try:
            pil = Image.open(image)
            pil.load()
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"--image {image}: cannot be read as an image ({exc})") from None
        source = image
    from zoo.data.transforms import to_rgb  # noqa: PLC0415

    pixels = model.processor().image_transform(train=False)(to_rgb(pil)).unsqueeze(0)  # the model's preprocessing
    tok = model.text.get_tokenizer()
    enc = tok([question], return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(pixels, enc["input_ids"], enc["attention_mask"])
    run_s = time.perf_counter() - t0
    q = torch.zeros(1, 1, 4, 8)
    report = {
        "model": model_name,
        "parameters": model.num_parameters(),
        "image": source,
        "question": question,
        "question_tokens": tok.convert_ids_to_tokens(enc["input_ids"][0].tolist()),
        "vision_tokens": tuple(out.vision.tokens.shape),
        "fused_tokens": tuple(out.fused.tokens.shape),
        "attention_backend": select_backend(q, q, q),
    }
    print(f"model       {model_name}  ({report['parameters']:,} parameters, random weights; built in {build_s:.2f} s)")
    print(f"image       {source} -> tensor {tuple(pixels.shape)}")
    print(f"question    {question!r} -> {len(report['question_tokens'])} tokens {report['question_tokens']}")
    print(f"vision      tokens {report['vision_tokens']}   text tokens {tuple(out.text.tokens.shape)}"
          f"   fused tokens {report['fused_tokens']}")
    print(f"attention   backend {report['attention_backend']!r} on {pixels.device.type}; forward took {run_s * 1e3:.1f} ms")
    if out.similarity is not None:
        report["itc_similarity"] = float(out.similarity[0, 0])
        print(f"ITC         image–question cosine similarity {report['itc_similarity']:+.4f}")
    if out.match_prob is not None:
        report["itm_match_prob"] = float(out.match_prob[0])
        print(f"ITM         probability that the question matches the image {report['itm_match_prob']:.4f}")
    if out.answer_logits is not None:
        probs = out.answer_logits.softmax(-1)[0]
        labels = getattr(model.vqa, "labels", None) or [str(i) for i in range(probs.numel())]
        top = probs.topk(min(3, probs.numel()))
        report["answers"] = [(labels[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        print("answers     " + ", ".join(f"{a} ({p:.3f})" for a, p in report["answers"]) + "   (untrained head)")
    return report
