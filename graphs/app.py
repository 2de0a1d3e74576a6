"""Typed app builders: `build_app(args) -> Application`.

Used by `photostudio serve` and by Serve configs (``import_path: graphs.app:build_app`` with
``args:``), so `serve run serve_config.yaml` / `serve deploy serve_config.yaml` and the CLI
build the same graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from graphs.auth import AuthConfig
from graphs.quotas import QuotaConfig
from graphs.settings import Profile, Settings
from models.matting import GraphOptimization
from storage.config import StorageSettings

# The router's LLM stage per profile: production on vLLM (GPU), local on transformers,
# tiny without (rules + embeddings answer; /v1/capabilities says so).
DEFAULT_LLM_BACKEND = {"tiny": "off", "local": "transformers", "production": "vllm"}


class AppArgs(BaseModel):
    """Builder args. Unset fields fall back to `Settings` (``PHOTOSTUDIO_*`` env vars)."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile | None = Field(None, description="tiny | local | production")
    generator_model: str | None = Field(None, description="registry name, e.g. tiny-sd, sd15")
    generator_source: str | None = Field(None, description="weights: local folder or hub id")
    data_dir: str | None = None
    zoo_dir: str | None = None
    database_url: str | None = Field(None, description="prefer PHOTOSTUDIO_DATABASE_URL for "
                                     "URLs with passwords")
    storage: dict[str, Any] = Field(
        default_factory=dict, description="storage.config.StorageSettings overrides, e.g. "
        "{asset_store: s3, asset_bucket: ..., asset_endpoint_url: ...}; keep credentials in "
        "the environment")
    public_base_url: str | None = None
    handle_transport: Literal["grpc", "actor"] | None = Field(
        None, description="ingress and router -> model deployment calls (default: the "
        "settings', grpc)")
    matting_model: str | None = Field(None, description="e.g. tiny-u2net, u2net, birefnet-general")
    matting_source: str | None = Field(None, description="an .onnx file or folder")
    matting_graph_optimization: GraphOptimization = Field(
        "auto", description="onnxruntime's graph optimization level for the matting model; "
        "auto (CPU): the faster of all and extended, timed once at load")
    faceswap_model: str | None = Field(None, description="tiny-insightface or inswapper-128")
    faceswap_source: str | None = Field(None, description="folder with a pack + inswapper_128")
    upscale_model: str | None = Field(None, description="tiny-esrgan or realesrgan-x4")
    upscale_source: str | None = Field(None, description="a .pth file or folder of them")
    video_model: str | None = Field(None, description="tiny-ltx or ltx-video; 'off' = no "
                                    "video deployment")
    video_source: str | None = Field(None, description="weights: local folder or hub id")
    video_num_gpus: float | None = Field(None, gt=0, le=1)
    vision_model: str | None = Field(None, description="image analysis (caption + VQA): "
                                     "tiny-blip, blip-base, or 'off' (no Vision deployment)")
    vision_source: str | None = Field(None, description="a folder with caption/ (+ vqa/)")
    vision_num_gpus: float | None = Field(None, gt=0, le=1)
    auto_tag: bool = Field(False, description="analyse each generated or edited image in the "
                           "background (Vision caption + faces + colours) and keep its tags "
                           "for the gallery's search; needs the Vision deployment. Off: tags "
                           "come from POST /v1/images/analyze with asset_id")
    llm_backend: Literal["off", "auto", "vllm", "transformers"] | None = Field(
        None, description="the router's LLM stage; default per profile (tiny: off)")
    llm_model: str | None = Field(None, description="e.g. tiny-llm, qwen2.5-1.5b-instruct")
    llm_source: str | None = Field(None, description="weights: local folder or hub id")
    llm_num_gpus: float | None = Field(None, ge=0, le=1)
    llm_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM; must equal llm_num_gpus (checked)")
    llm_max_model_len: int = Field(4096, ge=256)
    router_embeddings: bool = Field(True, description="the router's sentence-embedding "
                                    "stage (all-MiniLM-L6-v2, offline)")
    use_gpu: bool | None = Field(None, description="default: production yes, others no")
    generator_num_gpus: float | None = Field(None, gt=0, le=1)
    max_batch_size: int = Field(8, ge=1, le=64)
    max_adapter_sets: int = Field(4, ge=1, le=64, description="LoRA adapter sets cached per "
                                  "Generator replica (Serve's max_num_models_per_replica; "
                                  "least recently used evicted)")
    max_lora_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest LoRA file "
                                "POST /v1/models/loras accepts (an upload is also bounded by "
                                "the request body limit, PHOTOSTUDIO_MAX_REQUEST_BYTES)")
    lora_import_dirs: list[str] | None = Field(
        None, description="folders admin keys may register LoRAs from by server path "
        "(default: <data_dir>/lora-imports); [] turns path registration off")
    generator_torch_threads: int | None = Field(
        None, ge=1, le=256, description="torch CPU threads of a Generator replica (default: "
        "its num_cpus); on CPU, more threads also make batches pay off more")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=5, description="how long a batch waits for more requests; requests "
        "that arrive while a batch runs join the next one anyway")
    model_niceness: int = Field(
        4, ge=0, le=19, description="added to the CPU niceness of the model replicas "
        "(Generator, Matting, FaceSwap, Upscaler): on a node whose cores are full, the request "
        "path runs first and sheds overload quickly (BENCHMARKS.md, 'Overload'); 0 = off")
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, description="uploads larger → 413")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="uploads larger → 413")
    max_request_pixels: int = Field(
        2 * 4096 * 4096, ge=64 * 64, description="the images of one request together (chat "
        "uploads, edit references + mask, face-swap pair): more → 413 before any is decoded")
    job_heartbeat_s: float = Field(10.0, gt=0, description="running jobs beat this often")
    session_ttl_s: float = Field(24 * 3600, gt=0, description="idle chat sessions expire")
    job_stale_s: float = Field(60.0, gt=0, description="a running job without a heartbeat "
                               "for this long is marked failed (its replica died)")
    auth_enabled: bool | None = Field(None, description="API keys (default on); false only "
                                      "for the tiny/local profiles")
    project: str = Field("default", description="the project of every request when auth "
                         "is off")
    rate_limit_storage: str | None = Field(None, description="redis://host:port/db (shared "
                                           "by ingress replicas) or memory://")
    requests_per_minute: int | None = Field(None, ge=1, description="default per API key")
    images_per_day: int | None = Field(None, ge=1, description="default per API key")
    # LoRA trainings (graphs/training.py): Ray tasks outside the serving replicas
    training_num_gpus: float | None = Field(None, ge=0, description="GPUs per training task; "
                                            "default: 1 with use_gpu, else 0 (CPU)")
    max_concurrent_trainings: int = Field(1, ge=1, description="trainings running at once "
                                          "in the cluster; more wait queued")
    training_max_steps: int = Field(5000, ge=1, description="steps limit per training")
    training_torch_threads: int | None = Field(None, ge=1, description="torch CPU threads "
                                               "of a training task (CPU trainings)")


def build_app(args: AppArgs) -> Application:
    # here, not at the top: `photostudio` commands and config checks import AppArgs without
    # the deployments (and the Ingress app with its middleware)
    from deployments import faceswap, generator, matting, upscale, vision
    from deployments import video as video_dep
    from deployments.router import Router
    from graphs.ingress import Ingress, IngressConfig
    from models.registry import default_model

    if isinstance(args, dict):  # serve's builder call passes a dict when untyped
        args = AppArgs(**args)
    settings = Settings()
    profile = args.profile or settings.profile
    data_dir = Path(args.data_dir or settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    zoo_dir = args.zoo_dir or (str(settings.zoo_dir) if settings.zoo_dir else None)
    database_url = (args.database_url or settings.database_url
                    or f"sqlite:///{data_dir / 'photostudio.db'}")
    use_gpu = args.use_gpu if args.use_gpu is not None else profile == "production"
    # the storage the Ingress will build (graphs/ingress.py), checked before anything starts
    storage = {"data_dir": str(data_dir), "asset_root": str(data_dir / "assets"),
               "database_url": database_url, **args.storage}
    check_shared_storage(profile, StorageSettings(**storage), alive_ray_nodes())
    auth_config = auth_config_for(args, settings, profile)
    allow_fallback = profile == "local"

    def model_for(deployment: str, explicit: str | None) -> str:
        return explicit or default_model(deployment, profile)

    def gpu_options(default_fraction: float, num_cpus: float = 1) -> dict:
        if not use_gpu:
            return {}
        return {"ray_actor_options": {"num_cpus": num_cpus, "num_gpus": default_fraction}}

    gen = generator.Generator.options(
        **gpu_options(args.generator_num_gpus or generator.DEFAULT_NUM_GPUS)).bind(
        model=model_for("generator", args.generator_model or settings.generator_model),
        source=args.generator_source or settings.generator_source,
        allow_fallback=allow_fallback,
        zoo_dir=zoo_dir,
        max_batch_size=args.max_batch_size,
        max_adapter_sets=args.max_adapter_sets,
        # registered LoRAs' files: the Ingress's asset store (not its database)
        storage={k: v for k, v in storage.items() if k != "database_url"},
        torch_threads=args.generator_torch_threads,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        niceness=args.model_niceness,
    )
    matting_name = model_for("matting", args.matting_model)
    mat = matting.Matting.options(**gpu_options(matting.DEFAULT_NUM_GPUS)).bind(
        model=matting_name, source=args.matting_source, zoo_dir=zoo_dir,
        allow_fallback=allow_fallback, niceness=args.model_niceness,
        graph_optimization=args.matting_graph_optimization)
    faceswap_name = model_for("faceswap", args.faceswap_model)
    swap = faceswap.FaceSwap.options(**gpu_options(faceswap.DEFAULT_NUM_GPUS)).bind(
        model=faceswap_name, source=args.faceswap_source, zoo_dir=zoo_dir,
        allow_fallback=allow_fallback, niceness=args.model_niceness)
    upscale_name = model_for("upscale", args.upscale_model)
    up = upscale.Upscaler.options(**gpu_options(upscale.DEFAULT_NUM_GPUS)).bind(
        model=upscale_name, source=args.upscale_source,
        zoo_dir=zoo_dir, allow_fallback=allow_fallback, niceness=args.model_niceness)
    vid = None
    video_name = model_for("video", args.video_model)
    if video_name != "off":
        vid = video_dep.Video.options(
            **gpu_options(args.video_num_gpus or video_dep.DEFAULT_NUM_GPUS)).bind(
            model=video_name, source=args.video_source,
            zoo_dir=zoo_dir, allow_fallback=allow_fallback, niceness=args.model_niceness)
    vision_name = model_for("vision", args.vision_model)
    see = None
    if vision_name != "off":
        see = vision.Vision.options(
            **gpu_options(args.vision_num_gpus or vision.DEFAULT_NUM_GPUS)).bind(
            model=vision_name, source=args.vision_source, zoo_dir=zoo_dir,
            allow_fallback=allow_fallback, niceness=args.model_niceness)
    llm = None
    backend = args.llm_backend or DEFAULT_LLM_BACKEND[profile]
    if backend != "off":
        from deployments import llm as llm_dep

        num_gpus = 0.0
        if use_gpu:
            num_gpus = args.llm_num_gpus if args.llm_num_gpus is not None \
                else llm_dep.DEFAULT_NUM_GPUS
        llm = llm_dep.llm_deployment(llm_dep.LLMAppConfig(
            backend=backend, model=model_for("llm", args.llm_model), source=args.llm_source,
            num_gpus=num_gpus, gpu_memory_utilization=args.llm_gpu_memory_utilization,
            max_model_len=args.llm_max_model_len, zoo_dir=zoo_dir,
            allow_fallback=allow_fallback))
    transport = args.handle_transport or settings.handle_transport
    router = Router.bind(llm, use_embeddings=args.router_embeddings, handle_transport=transport)
    config = IngressConfig(
        profile=profile,
        asset_dir=str(data_dir / "assets"),
        database_url=database_url,
        public_base_url=args.public_base_url or settings.public_base_url,
        handle_transport=transport,
        storage=args.storage,
        max_image_pixels=args.max_image_pixels,
        max_upload_bytes=args.max_upload_bytes,
        max_request_pixels=args.max_request_pixels,
        max_lora_bytes=args.max_lora_bytes,
        lora_import_dirs=(args.lora_import_dirs if args.lora_import_dirs is not None
                          else [str(data_dir / "lora-imports")]),
        job_heartbeat_s=args.job_heartbeat_s,
        job_stale_s=max(args.job_stale_s, 3 * args.job_heartbeat_s),
        session_ttl_s=args.session_ttl_s,
        project=args.project,
        auth=auth_config,
        auto_tag=args.auto_tag and see is not None,
        training={
            "num_gpus": args.training_num_gpus if args.training_num_gpus is not None
            else (1.0 if use_gpu else 0.0),
            "max_concurrent": args.max_concurrent_trainings,
            "max_steps": args.training_max_steps,
            "torch_threads": args.training_torch_threads, "zoo_dir": zoo_dir,
            "generator_model": model_for("generator", args.generator_model
                                         or settings.generator_model),
            "generator_source": args.generator_source or settings.generator_source},
    )
    return Ingress.bind(gen, mat, swap, up, router, llm, config, video=vid, vision=see)


def alive_ray_nodes() -> int:
    """Nodes alive in the Ray cluster this builder runs in (`serve deploy` builds the app in
    a task on the cluster); 1 when Ray is not initialized here (config checks, unit tests)."""
    import ray

    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_shared_storage(profile: str, storage: StorageSettings, nodes: int) -> None:
    """The production profile on a multi-node cluster refuses node-local storage: assets in a
    local folder or records in SQLite live on whichever node an Ingress replica runs on, so
    another replica (autoscaled, or restarted on another node after a node is lost) would not
    see them. Records must be in Postgres and assets in S3/Supabase (README, "Running on a
    cluster")."""
    if profile != "production" or nodes <= 1:
        return
    local = []
    if storage.asset_store == "local":
        root = storage.asset_root or storage.data_dir / "assets"
        local.append(f"assets in the node-local folder {root}"
                     " (set storage: {asset_store: s3, asset_bucket: ...} in the app's args, or "
                     "PHOTOSTUDIO_ASSET_STORE=s3|supabase and PHOTOSTUDIO_ASSET_BUCKET)")
    url = storage.resolved_database_url()
    if url.startswith("sqlite"):
        local.append("records in SQLite on one node (set PHOTOSTUDIO_DATABASE_URL="
                     "postgresql://...)")
    if local:
        raise ValueError(
            f"the production profile on a multi-node Ray cluster ({nodes} nodes alive) needs "
            "storage every node shares: " + "; ".join(local) + ". A node-local data dir "
            "cannot serve a cluster: Ingress replicas on other nodes, or one restarted after "
            "its node is lost, would not find the assets and jobs")


def tiny_overrides() -> dict[str, Any]:
    """AppArgs that turn a production config's models into the tiny ones (the tests, the
    benches and the simulated cluster deploy serve_config.yaml with these): each deployment's
    tiny default from the catalogue, no weights path, the router's LLM on transformers."""
    from models.registry import DEFAULTS

    # tiny base models train on CPU (a training task asks for no GPU)
    args: dict[str, Any] = {"llm_backend": "transformers", "training_num_gpus": 0}
    for deployment, names in DEFAULTS.items():
        args[f"{deployment}_model"] = names["tiny"]
        args[f"{deployment}_source"] = None
    return args


def auth_config_for(args: AppArgs, settings: Settings, profile: str):
    """API keys are on unless explicitly turned off, which only tiny/local profiles allow."""
    enabled = args.auth_enabled if args.auth_enabled is not None else settings.auth_enabled
    if not enabled and profile == "production":
        raise ValueError("the production profile requires API-key auth: remove "
                         "auth_enabled=false (PHOTOSTUDIO_AUTH_ENABLED); it is only for the "
                         "tiny and local profiles")
    return AuthConfig(enabled=enabled, project=args.project, quotas=QuotaConfig(
        storage_url=args.rate_limit_storage or settings.rate_limit_storage,
        requests_per_minute=args.requests_per_minute or settings.requests_per_minute,
        images_per_day=args.images_per_day or settings.images_per_day))
