"""A FastAPI route class for hot JSON endpoints.

FastAPI reads a JSON body with ``json.loads`` and then validates the Python objects;
pydantic can validate the raw bytes in one pass (``model_validate_json``), about a
third of the HTTP cost of a 100-event usage batch. Routes of a router built with
``route_class=JsonBodyRoute`` whose body is one pydantic model get that pass; FastAPI
then finds an instance of the model and keeps it as it is. A body that fails takes
FastAPI's usual path, so every error (and its 400) is exactly what it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError


class _ModelBodyRequest(Request):
    model: type[BaseModel]

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = self.model.model_validate_json(body)
            except ValidationError:
                self._json = json.loads(body)  # FastAPI validates it again and reports the errors
        return self._json


class JsonBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        if field is None or len(self.dependant.body_params) != 1 or getattr(field.field_info, "embed", False):
            return handler
        model = field.field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler
        request_class = type(f"{model.__name__}Request", (_ModelBodyRequest,), {"model": model})

        async def route(request: Request) -> Response:
            return await handler(request_class(request.scope, request.receive))

        return route
