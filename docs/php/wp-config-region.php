<?php
// wp-config.php of WordPress / WooCommerce (the part above "That's all, stop editing!"): the
// database and object cache of the active region; cron runs under `switchyard lock run`.
require_once __DIR__ . '/switchyard-region.php';
$switchyard = switchyard_region('us-east-1');
$switchyard_site = [
    'us-east-1' => ['db' => 'db.use1.shop.internal', 'redis' => 'redis.use1.shop.internal',
                    'uploads' => 'shop-media-use1'],
    'eu-west-1' => ['db' => 'db.euw1.shop.internal', 'redis' => 'redis.euw1.shop.internal',
                    'uploads' => 'shop-media-euw1'],
][$switchyard['region']];
define('DB_NAME', 'wordpress');
define('DB_USER', 'wordpress');
define('DB_PASSWORD', getenv('WP_DB_PASSWORD') ?: '');
define('DB_HOST', $switchyard_site['db']);
define('WP_REDIS_HOST', $switchyard_site['redis']);       // Redis Object Cache plugin
define('S3_UPLOADS_BUCKET', $switchyard_site['uploads']); // S3 Uploads plugin
define('S3_UPLOADS_REGION', $switchyard['aws_region']);
define('DISABLE_WP_CRON', true);                          // wp cron event run, under lock run
define('SWITCHYARD_GENERATION', $switchyard['generation']);
