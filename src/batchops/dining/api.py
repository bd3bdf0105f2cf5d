"""HTTP routes of dining (seed 002). No rules here: they live in ``service.py``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from batchops.core.batch import BatchResult
from batchops.core.runtime import Runtime, get_runtime, service_of
from batchops.core.schemas import Envelope, IsoDate, Page, PageParams, cents_to_decimal, ok
from batchops.dining.models import Department, Menu, Order
from batchops.dining.ordering import OrderSpec, Placed, failure_message
from batchops.dining.rules import ensure_dept_admin
from batchops.dining.schemas import (
    BatchOrdersIn,
    BatchOrdersOut,
    DaySummary,
    DepartmentIn,
    DepartmentMealSummary,
    DepartmentOut,
    DepartmentsBatchIn,
    MealSummary,
    MenuIn,
    MenuOut,
    MenusBatchIn,
    OrderError,
    OrderOut,
    OrderView,
    PublishIn,
    PublishOut,
    QuickBatchOrdersIn,
)
from batchops.dining.service import DiningService
from batchops.identity.api import AdminUser, CurrentUser
from batchops.identity.models import User

router = APIRouter(prefix="/api/dining", tags=["dining"])

BATCH_MESSAGE = "批量报餐提交完成"
QUICK_MESSAGE = "快速批量报餐提交完成"
MealFilter = Literal["breakfast", "lunch", "dinner"]


Service = Annotated[DiningService, Depends(service_of(DiningService))]


def ordering_admin(operation: str) -> Any:
    """A department admin, limited per minute and endpoint like every batch endpoint."""

    async def dependency(user: CurrentUser, rt: Annotated[Runtime, Depends(get_runtime)]) -> User:
        ensure_dept_admin(user)
        await rt.limiter.hit(f"{operation}:{user.id}")
        return user

    return Depends(dependency)


def batch_out(result: BatchResult[OrderSpec, Placed]) -> BatchOrdersOut:
    return BatchOrdersOut(
        total_orders=result.total_count,
        success_count=result.success_count,
        failed_count=result.failed_count,
        orders=[
            OrderOut(
                order_id=p.id,
                order_index=p.index,
                date=p.order["date"].isoformat(),
                meal_type=p.order["meal_type"],
                member_count=p.order["member_count"],
                total_amount=cents_to_decimal(p.order["total_cents"]),
                status=p.order["status"],
            )
            for p in result.results
        ],
        errors=[
            OrderError(
                order_index=f.item.index,
                date=f.item.date,
                meal_type=f.item.meal_type,
                error=failure_message(f),
                code=f.error,
            )
            for f in result.failures
        ],
        execution_time_ms=result.execution_time_ms,
    )


def batch_specs(body: BatchOrdersIn) -> list[OrderSpec]:
    """The orders of a batch-orders request (also what the console sends)."""
    return [
        OrderSpec(index=i, date=o.date, meal_type=o.meal_type, members=o.members, remark=o.remark)
        for i, o in enumerate(body.orders, start=1)
    ]


def quick_specs(body: QuickBatchOrdersIn) -> list[OrderSpec]:
    """The orders of a quick-batch-orders request: one per meal, each with every member."""
    members: list[Any] = [{"userId": m.user_id} for m in body.members]
    return [
        OrderSpec(index=i, date=m.date, meal_type=m.meal_type, members=members, remark=body.remark)
        for i, m in enumerate(body.meals, start=1)
    ]


@router.post("/enhanced/batch-orders", response_model=Envelope[BatchOrdersOut])
async def batch_orders(
    body: BatchOrdersIn, service: Service, caller: User = ordering_admin("dining.batch_orders")
) -> Envelope[BatchOrdersOut]:
    result = await service.place_orders(caller, batch_specs(body), body.mode(), operation="batch_orders")
    return ok(batch_out(result), BATCH_MESSAGE)


@router.post("/enhanced/quick-batch-orders", response_model=Envelope[BatchOrdersOut])
async def quick_batch_orders(
    body: QuickBatchOrdersIn, service: Service, caller: User = ordering_admin("dining.quick_batch_orders")
) -> Envelope[BatchOrdersOut]:
    result = await service.place_orders(caller, quick_specs(body), body.mode(), operation="quick_batch_orders")
    return ok(batch_out(result), QUICK_MESSAGE)


# --- orders -------------------------------------------------------------------------------------
def order_view(order: Order, members: list[str]) -> OrderView:
    return OrderView(
        order_id=order.id,
        department_id=order.department_id,
        date=order.date,
        meal_type=order.meal_type,
        member_count=order.member_count,
        price_per_person=cents_to_decimal(order.price_cents),
        total_amount=cents_to_decimal(order.total_cents),
        status=order.status,
        remark=order.remark,
        created_by=order.created_by,
        created_at=order.created_at,
        cancelled_at=order.cancelled_at,
        member_ids=members,
    )


@router.get("/orders", response_model=Envelope[Page[OrderView]])
async def list_orders(
    caller: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Query()],
    date: IsoDate | None = None,
    meal_type: Annotated[MealFilter | None, Query(alias="mealType")] = None,
    department_id: Annotated[str | None, Query(alias="departmentId", max_length=128)] = None,
    status: Literal["pending", "cancelled"] | None = None,
) -> Envelope[Page[OrderView]]:
    rows, total = await service.list_orders(
        caller,
        day=date,
        meal_type=meal_type,
        department_id=department_id,
        status=status,
        offset=paging.offset,
        limit=paging.page_size,
    )
    items = [order_view(o, m) for o, m in rows]
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


@router.post("/orders/{order_id}/cancel", response_model=Envelope[OrderView])
async def cancel_order(order_id: str, caller: CurrentUser, service: Service) -> Envelope[OrderView]:
    order, members = await service.cancel_order(caller, order_id)
    return ok(order_view(order, members), "订单已取消")


@router.get("/summary", response_model=Envelope[DaySummary])
async def day_summary(date: IsoDate, caller: CurrentUser, service: Service) -> Envelope[DaySummary]:
    summary = await service.day_summary(caller, date)
    return ok(
        DaySummary(
            date=date,
            meals=[
                MealSummary(meal_type=m, headcount=h, order_count=n, total_amount=cents_to_decimal(t))
                for m, h, n, t in summary.meals
            ],
            by_department=[
                DepartmentMealSummary(department_id=d, department_name=name, meal_type=m, headcount=h)
                for d, name, m, h in summary.by_department
            ],
        )
    )


# --- admin: departments and menus -------------------------------------------------------------------
def menu_out(m: Menu) -> MenuOut:
    return MenuOut(
        menu_id=m.id,
        date=m.date,
        meal_type=m.meal_type,
        price=cents_to_decimal(m.price_cents),
        items=list(m.items),
        published=m.published,
        updated_at=m.updated_at,
    )


def department_out(d: Department) -> DepartmentOut:
    return DepartmentOut.model_validate(d)


@router.post("/departments", response_model=Envelope[DepartmentOut])
async def upsert_department(body: DepartmentIn, _: AdminUser, service: Service) -> Envelope[DepartmentOut]:
    (department,) = await service.upsert_departments([body])
    return ok(department_out(department), "部门已保存")


@router.post("/departments/batch", response_model=Envelope[list[DepartmentOut]])
async def upsert_departments(body: DepartmentsBatchIn, _: AdminUser, service: Service) -> Envelope[list[DepartmentOut]]:
    departments = await service.upsert_departments(body.departments)
    return ok([department_out(d) for d in departments], f"已保存 {len(departments)} 个部门")


@router.get("/departments", response_model=Envelope[list[DepartmentOut]])
async def list_departments(_: CurrentUser, service: Service) -> Envelope[list[DepartmentOut]]:
    return ok([department_out(d) for d in await service.list_departments()])


@router.post("/menus", response_model=Envelope[MenuOut])
async def upsert_menu(body: MenuIn, _: AdminUser, service: Service) -> Envelope[MenuOut]:
    (menu,) = await service.upsert_menus([body])
    return ok(menu_out(menu), "菜单已保存")


@router.post("/menus/batch", response_model=Envelope[list[MenuOut]])
async def upsert_menus(body: MenusBatchIn, _: AdminUser, service: Service) -> Envelope[list[MenuOut]]:
    menus = await service.upsert_menus(body.menus)
    return ok([menu_out(m) for m in menus], f"已保存 {len(menus)} 个菜单")


@router.post("/menus/publish", response_model=Envelope[PublishOut])
async def publish_menus(body: PublishIn, _: AdminUser, service: Service) -> Envelope[PublishOut]:
    menus = await service.publish_menus(body.menu_ids, body.published)
    word = "发布" if body.published else "撤回"
    return ok(PublishOut(updated_count=len(menus), menus=[menu_out(m) for m in menus]), f"已{word} {len(menus)} 个菜单")


@router.get("/menus", response_model=Envelope[list[MenuOut]])
async def list_menus(
    _: CurrentUser,
    service: Service,
    date_from: Annotated[IsoDate | None, Query(alias="dateFrom")] = None,
    date_to: Annotated[IsoDate | None, Query(alias="dateTo")] = None,
    meal_type: Annotated[MealFilter | None, Query(alias="mealType")] = None,
) -> Envelope[list[MenuOut]]:
    menus = await service.list_menus(date_from=date_from, date_to=date_to, meal_type=meal_type)
    return ok([menu_out(m) for m in menus])
