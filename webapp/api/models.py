"""Upload, list, get and delete models."""

from __future__ import annotations

from flask import g
from flask.views import MethodView
from flask_smorest.fields import Upload
from marshmallow import Schema, ValidationError, fields, validate
from werkzeug.datastructures import FileStorage

from ..auth.guards import roles_required
from ..services import model_store, policy
from ..services.model_store import ModelUploadSchema
from . import ApiBlueprint
from .schemas import ErrorSchema, ModelListSchema, ModelSchema

blp = ApiBlueprint("Models", __name__, description="The model store: upload and inspect models.")


class ModelQuerySchema(Schema):
    q = fields.String(
        load_default="",
        validate=validate.Length(max=200),
        metadata={"description": "Part of the name or format, any case"},
    )


class _File(Upload):
    """A file part of the body: a text field of the same name is no file."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, FileStorage):
            raise ValidationError("Send a file here, not text.")
        return value


class ModelUploadRequestSchema(ModelUploadSchema):
    """The multipart body of POST /models: the files beside the fields the page shares."""

    file = _File(required=True, metadata={"description": "ONNX, TorchScript or .pt2 program"})
    eval_data = _File(
        metadata={
            "description": ".npz with x (inputs; or one array per input name), optional y (labels), "
            "sample_axes (each input's sample axis, -1: fed whole), and ground truth for the "
            "detection metric (y_boxes [samples, K, 4] corners with y_box_classes [samples, K], "
            "-1 pads) or the CTC metric (y_sequences [samples, L], 0 pads)"
        }
    )


@blp.route("/models")
class Models(MethodView):
    @blp.doc(operationId="listModels")
    @blp.arguments(ModelQuerySchema, location="query")
    @blp.response(200, ModelListSchema)
    def get(self, query):
        """List the models you may see, newest first; `q` searches names and formats."""
        models = model_store.list_for(g.api_user, query["q"])
        return {"models": models, "total": len(models)}

    @roles_required(*policy.CREATORS)
    @blp.doc(operationId="uploadModel")
    @blp.arguments(ModelUploadRequestSchema, location="form_and_files")
    @blp.response(201, ModelSchema)
    @blp.alt_response(413, schema=ErrorSchema, description="Larger than uploads.max_bytes.")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The same file (and evaluation data and task) as a model of yours of that name; "
        "`details.model_id` names it.",
    )
    @blp.alt_response(
        422,
        schema=ErrorSchema,
        description="Not a model we accept, or data that does not fit it; `details` names the field.",
    )
    def post(self, upload):
        """Upload a model (multipart); it is analysed before this returns."""
        eval_data = upload.get("eval_data")
        return model_store.add(
            g.api_user,
            upload["file"].stream,
            upload["file"].filename,
            upload.get("name"),
            eval_data.stream if eval_data else None,
            model_store.parse_input_shape(upload.get("input_shape")),
            upload["task"],
        )


@blp.route("/models/<int:model_id>")
class ModelItem(MethodView):
    @blp.doc(operationId="getModel")
    @blp.response(200, ModelSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    def get(self, model_id):
        """One model with its analysis."""
        return model_store.get_for(g.api_user, model_id)

    @roles_required(*policy.CREATORS)
    @blp.doc(operationId="deleteModel")
    @blp.response(204)
    @blp.alt_response(409, schema=ErrorSchema, description="A session still uses the model.")
    def delete(self, model_id):
        """Delete a model (refused while a queued or running session uses it)."""
        model_store.delete(model_store.get_for(g.api_user, model_id), g.api_user)
