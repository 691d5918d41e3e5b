<?php
// Reads the env file `switchyard pointer watch --write-env FILE` keeps up to date
// (AWS_REGION, SWITCHYARD_ACTIVE_REGION, SWITCHYARD_GENERATION; replaced atomically).
// Install next to the app (app/etc/ for Magento, the WordPress root) and require it.
// SWITCHYARD_REGION_FILE (PHP-FPM: env[SWITCHYARD_REGION_FILE] in the pool) overrides the path.
function switchyard_region(string $default_region): array
{
    static $read = null;
    if ($read !== null) {
        return $read;
    }
    $file = getenv('SWITCHYARD_REGION_FILE') ?: '/etc/shop/region.env';
    $values = is_readable($file) ? parse_ini_file($file, false, INI_SCANNER_RAW) : false;
    if (!is_array($values) || empty($values['SWITCHYARD_ACTIVE_REGION'])) {
        // No file yet (pointer watch not started): serve from the home region, and say so.
        error_log("switchyard: cannot read $file; using region $default_region");
        $values = ['AWS_REGION' => $default_region, 'SWITCHYARD_ACTIVE_REGION' => $default_region,
                   'SWITCHYARD_GENERATION' => '0'];
    }
    return $read = [
        'region' => $values['SWITCHYARD_ACTIVE_REGION'],
        'aws_region' => $values['AWS_REGION'] ?? $values['SWITCHYARD_ACTIVE_REGION'],
        'generation' => (int) ($values['SWITCHYARD_GENERATION'] ?? 0),
    ];
}
