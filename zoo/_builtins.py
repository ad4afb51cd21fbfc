"""Which module defines each built-in registered name, so that a lookup imports only that module.

A model family is one package, ``zoo/models/<family>/``: its model, the parts only it uses (registered from there) and
its converter; its rows here name the modules of that package. A family installed as a plug-in package needs no row:
its entry point (group ``mmzoo.plugins``) imports it.

tests/test_registry.py imports every module listed here and checks that the table and the decorators agree.
"""

BUILTINS: dict[str, dict[str, str]] = {
    "vision_encoder": {
        "timm": "zoo.modules.vision.timm_encoder",
        "beit_v2": "zoo.modules.vision.beit",
        "swin": "zoo.modules.vision.swin",
        "open_clip": "zoo.modules.vision.open_clip",
        "video": "zoo.modules.vision.video",
        "resnet_grid": "zoo.models.davinci.resnet_grid",
        "vqgan": "zoo.models.davinci.vqgan",
        "univl_video": "zoo.models.univl.parts",
        "univl_pixel_grid": "zoo.models.univl.parts",
    },
    "text_encoder": {
        "hf": "zoo.modules.text.hf",
        "split_bert": "zoo.modules.text.split_bert",
        "davinci_text": "zoo.models.davinci.model",
    },
    "fusion": {
        "cross_attention": "zoo.modules.fusion.cross_attention",
        "univl_cross": "zoo.models.univl.parts",
    },
    "adapter": {
        "linear": "zoo.modules.adapters.linear",
        "mlp": "zoo.modules.adapters.linear",
    },
    "language_model": {
        "hf_causal_lm": "zoo.modules.lm.causal_lm",
    },
    "head": {
        "itc": "zoo.heads.contrastive",
        "itm": "zoo.heads.matching",
        "classifier": "zoo.heads.classifier",
        "mlm": "zoo.heads.mlm",
        "caption": "zoo.heads.caption",
        "bbox": "zoo.heads.box",
        "nlvr": "zoo.heads.nlvr",
        "vqa_generative": "zoo.heads.vqa",
        "univl_decoder": "zoo.models.univl.parts",
        "univl_mfm": "zoo.models.univl.parts",
    },
    "model": {
        "fusion_encoder": "zoo.models.fusion_encoder",
        "x2vlm": "zoo.models.x2vlm.model",
        "epalm": "zoo.models.epalm.model",
        "davinci": "zoo.models.davinci.model",
        "cclm": "zoo.models.cclm.model",
        "mmgpt": "zoo.models.mmgpt.model",
        "univl": "zoo.models.univl.model",
    },
    "dataset": {
        "vqa": "zoo.data.datasets",
        "retrieval_train": "zoo.data.datasets",
        "retrieval_eval": "zoo.data.datasets",
        "caption_train": "zoo.data.datasets",
        "caption_eval": "zoo.data.datasets",
        "ve": "zoo.data.datasets",
        "nlvr": "zoo.data.datasets",
    },
    "task": {
        "vqa": "zoo.tasks.vqa",
        "retrieval": "zoo.tasks.retrieval",
        "captioning": "zoo.tasks.captioning",
        "ve": "zoo.tasks.ve",
        "nlvr": "zoo.tasks.nlvr",
        "pretrain": "zoo.tasks.pretrain",
    },
    "side_stream": {
        "parallel": "zoo.models.cclm.data",
        "language": "zoo.models.mmgpt.instruction",
    },
}
