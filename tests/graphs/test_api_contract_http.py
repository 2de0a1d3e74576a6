"""The published contract (issue #14, 6 and 9): every resource route answers a documented,
typed model, multipart routes are form models that refuse unknown fields, and
/v1/capabilities shows server paths to admin keys only."""

from __future__ import annotations

import httpx
import pytest

TYPED = {
    ("get", "/v1/jobs"): "JobList", ("get", "/v1/jobs/{job_id}"): "Job",
    ("delete", "/v1/jobs/{job_id}"): "Job", ("get", "/v1/projects"): "ProjectList",
    ("post", "/v1/projects"): "Project", ("get", "/v1/projects/{project_id}"): "Project",
    ("get", "/v1/projects/{project_id}/assets"): "AssetList",
    ("delete", "/v1/assets/{asset_id}"): "Deleted", ("get", "/v1/sessions"): "SessionList",
    ("get", "/v1/sessions/{session_id}"): "Session",
    ("delete", "/v1/sessions/{session_id}"): "Deleted", ("get", "/v1/models"): "ModelList",
    ("get", "/v1/models/{model_id}"): "ModelCard",
    ("post", "/v1/models/loras"): "ModelCard", ("delete", "/v1/models/loras/{name}"): "Deleted",
    ("post", "/v1/chat/plan"): "ChatPlan", ("post", "/v1/prompts/validate"): "PromptValidation",
    ("post", "/v1/prompts/refine"): "RefinedPrompt",
}
FORMS = {"/v1/images/edits": "EditForm", "/v1/images/variations": "VariationForm",
         "/v1/images/remove-background": "RemoveBackgroundForm",
         "/v1/images/face-swap": "FaceSwapForm", "/v1/images/upscale": "UpscaleForm",
         "/v1/images/edit-ops": "EditOpsForm", "/v1/images/style-transfer": "StyleTransferForm"}


@pytest.fixture(scope="module")
def spec(gateway):
    return httpx.get(f"{gateway.base_url}/openapi.json", timeout=30).json()


@pytest.mark.parametrize("route", list(TYPED), ids=lambda r: f"{r[0]} {r[1]}")
def test_resource_routes_answer_a_typed_model(spec, route):
    method, path = route
    responses = spec["paths"][path][method]["responses"]
    ok = responses.get("200") or responses.get("201")
    schema = ok["content"]["application/json"]["schema"]
    assert schema.get("$ref", "").endswith("/" + TYPED[route]), schema
    assert TYPED[route] in spec["components"]["schemas"]


@pytest.mark.parametrize("path", list(FORMS))
def test_multipart_routes_are_form_models_that_refuse_unknown_fields(spec, path, http):
    body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["$ref"].endswith("/" + FORMS[path])
    model = spec["components"]["schemas"][FORMS[path]]
    assert model["additionalProperties"] is False
    r = http.post(path, data={"colour": "red"}, files={"image": ("a.png", b"x", "image/png")})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("unknown_parameter", "missing_parameter")


def test_a_job_answer_matches_its_model(http):
    r = http.post("/v1/images/generations", params={"async": "true"},
                  json={"prompt": "a lighthouse", "size": "64x64", "steps": 1})
    assert r.status_code == 202, r.text
    job = r.json()
    assert set(job) == {"id", "object", "kind", "status", "progress", "step", "model",
                        "created_at", "started_at", "finished_at", "result", "error", "assets",
                        "links"}
    assert job["object"] == "job" and job["links"]["self"] == f"/v1/jobs/{job['id']}"


def test_capabilities_show_server_paths_to_admins_only(gateway, http):
    admin = http.get("/v1/capabilities").json()["deployments"]  # the suite's key is admin
    assert admin["generator"]["source"].startswith("/"), admin["generator"]
    token = gateway.create_key(scopes=["generate"])
    with httpx.Client(base_url=gateway.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        public = c.get("/v1/capabilities").json()["deployments"]
    assert set(public) == set(admin)
    for name, info in public.items():
        assert not info["source"].startswith(("/", "~", "s3://")), (name, info["source"])
    assert public["generator"]["source"] == admin["generator"]["name"]
