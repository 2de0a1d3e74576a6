"""Errors about a request's input, raised by any layer and mapped directly onto the one error
envelope by the ingress (`graphs.errors.to_api_error`): the field it is about travels in the
exception, never parsed out of its text."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: `param` names the field (a path such as ``ops[2].width``), the message says
    what to change (diffusers' `check_inputs` style). A `ValueError`, so code that catches
    those keeps working. `status` is the HTTP status it maps to (400, or 413/415/422)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value",
                 status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def under(self, prefix: str) -> InputError:
        """The same error with its field placed under `prefix` (``ops`` + ``[2].x``)."""
        param = f"{prefix}{'' if (self.param or '').startswith('[') else '.'}{self.param}" \
            if self.param else prefix
        return InputError(self.message, param=param, code=self.code, status=self.status)
