<?php
// app/etc/env.php of Magento 2 (excerpt): the database, Redis and the S3 media bucket of the
// active region. `pointer watch --exec 'systemctl reload php8.2-fpm'` reloads PHP-FPM when the
// region changes, which also drops OPcache's copy of this file and the old connections.
require_once __DIR__ . '/switchyard-region.php';
$switchyard = switchyard_region('us-east-1');
$site = [
    'us-east-1' => ['db' => 'db.use1.shop.internal', 'redis' => 'redis.use1.shop.internal',
                    'media' => 'shop-media-use1'],
    'eu-west-1' => ['db' => 'db.euw1.shop.internal', 'redis' => 'redis.euw1.shop.internal',
                    'media' => 'shop-media-euw1'],
][$switchyard['region']];
return [
    'db' => [
        'table_prefix' => '',
        'connection' => [
            'default' => [
                'host' => $site['db'],
                'dbname' => 'magento',
                'username' => 'magento',
                'password' => getenv('MAGENTO_DB_PASSWORD') ?: '',
                'model' => 'mysql4',
                'engine' => 'innodb',
                'initStatements' => 'SET NAMES utf8;',
                'active' => '1',
            ],
        ],
    ],
    'session' => [
        'save' => 'redis',
        'redis' => ['host' => $site['redis'], 'port' => '6379', 'database' => '2'],
    ],
    'cache' => [
        'frontend' => [
            'default' => [
                'backend' => 'Magento\\Framework\\Cache\\Backend\\Redis',
                'backend_options' => ['server' => $site['redis'], 'port' => '6379', 'database' => '0'],
            ],
        ],
    ],
    'remote_storage' => [
        'driver' => 'aws-s3',
        'config' => ['bucket' => $site['media'], 'region' => $switchyard['aws_region']],
    ],
    'system' => ['default' => ['web' => ['cookie' => ['cookie_domain' => 'shop.example.com']]]],
];
