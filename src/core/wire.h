/*
 * The wire contract's messages (proto/.../do_something.proto, compiled by
 * protoc-c at build time) under short names.
 */
#ifndef DS_CORE_WIRE_H
#define DS_CORE_WIRE_H

#include "com/agrounds/dosomething/v1/do_something.pb-c.h"

typedef Com__Agrounds__Dosomething__V1__WorkItem wire_work_item;
typedef Com__Agrounds__Dosomething__V1__WorkItem__ParamsEntry wire_param;
typedef Com__Agrounds__Dosomething__V1__Rejection wire_rejection;
typedef Com__Agrounds__Dosomething__V1__SubmitReply wire_submit_reply;
typedef Com__Agrounds__Dosomething__V1__UpdatesRequest wire_updates_request;
typedef Com__Agrounds__Dosomething__V1__Update wire_update;
typedef Com__Agrounds__Dosomething__V1__ItemsRequest wire_items_request;
typedef Com__Agrounds__Dosomething__V1__ItemsReply wire_items_reply;
typedef Com__Agrounds__Dosomething__V1__Item wire_known_item;
typedef Com__Agrounds__Dosomething__V1__RetryRequest wire_retry_request;
typedef Com__Agrounds__Dosomething__V1__RetryReply wire_retry_reply;

#define wire_work_item_unpack       com__agrounds__dosomething__v1__work_item__unpack
#define wire_work_item_free         com__agrounds__dosomething__v1__work_item__free_unpacked
#define wire_rejection_init         com__agrounds__dosomething__v1__rejection__init
#define wire_submit_reply_init      com__agrounds__dosomething__v1__submit_reply__init
#define wire_submit_reply_size      com__agrounds__dosomething__v1__submit_reply__get_packed_size
#define wire_submit_reply_pack      com__agrounds__dosomething__v1__submit_reply__pack
#define wire_submit_reply_unpack    com__agrounds__dosomething__v1__submit_reply__unpack
#define wire_submit_reply_free      com__agrounds__dosomething__v1__submit_reply__free_unpacked
#define wire_updates_request_unpack com__agrounds__dosomething__v1__updates_request__unpack
#define wire_updates_request_free   com__agrounds__dosomething__v1__updates_request__free_unpacked
#define wire_update_init            com__agrounds__dosomething__v1__update__init
#define wire_update_size            com__agrounds__dosomething__v1__update__get_packed_size
#define wire_update_pack            com__agrounds__dosomething__v1__update__pack
#define wire_items_request_unpack   com__agrounds__dosomething__v1__items_request__unpack
#define wire_items_request_free     com__agrounds__dosomething__v1__items_request__free_unpacked
#define wire_items_reply_init       com__agrounds__dosomething__v1__items_reply__init
#define wire_items_reply_size       com__agrounds__dosomething__v1__items_reply__get_packed_size
#define wire_items_reply_pack       com__agrounds__dosomething__v1__items_reply__pack
#define wire_known_item_init        com__agrounds__dosomething__v1__item__init
#define wire_retry_request_unpack   com__agrounds__dosomething__v1__retry_request__unpack
#define wire_retry_request_free     com__agrounds__dosomething__v1__retry_request__free_unpacked
#define wire_retry_reply_init       com__agrounds__dosomething__v1__retry_reply__init
#define wire_retry_reply_size       com__agrounds__dosomething__v1__retry_reply__get_packed_size
#define wire_retry_reply_pack       com__agrounds__dosomething__v1__retry_reply__pack

enum wire_state {
    STATE_UNSPECIFIED = COM__AGROUNDS__DOSOMETHING__V1__STATE__STATE_UNSPECIFIED,
    STATE_QUEUED = COM__AGROUNDS__DOSOMETHING__V1__STATE__QUEUED,
    STATE_STARTED = COM__AGROUNDS__DOSOMETHING__V1__STATE__STARTED,
    STATE_PROGRESS = COM__AGROUNDS__DOSOMETHING__V1__STATE__PROGRESS,
    STATE_SUCCEEDED = COM__AGROUNDS__DOSOMETHING__V1__STATE__SUCCEEDED,
    STATE_FAILED = COM__AGROUNDS__DOSOMETHING__V1__STATE__FAILED,
    STATE_RETRYING = COM__AGROUNDS__DOSOMETHING__V1__STATE__RETRYING,
    STATE_CANCELLED = COM__AGROUNDS__DOSOMETHING__V1__STATE__CANCELLED,
};
#define STATE_MAX STATE_CANCELLED

#endif
