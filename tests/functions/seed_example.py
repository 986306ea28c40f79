# ruff: noqa: W291
# The example function of the seed page, verbatim (its trailing space included).
import json


def handler(event, context):
    return {
        'statusCode': 200,
        'body': json.dumps(
            {
                'event': event,
                'context': context,
            }, 
            default=vars,
        ),
    }
